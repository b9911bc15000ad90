"""Signature tests of ``min_gru`` and ``min_lstm``: the parallel log-space model against the paper's recurrence.

The oracle below is written from Feng et al. (2024), §3.1.3 (minGRU) and §3.2.3 (minLSTM), in linear space, one step
at a time, in fp64 -- no logarithms, no scan -- with g(x) = x + 1/2 (x >= 0), σ(x) (x < 0) from the log-space appendix.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edifice
from edifice.testing import mutate_op, signature
from edifice_recurrent.min_rnn import MinRNN, MinRNNMixer, g, log_g

TOL = {"atol": 1e-5, "rtol": 1e-4}
GRAD_TOL = {"atol": 1e-4, "rtol": 1e-4}  # parameter gradients sum ~100 terms of size ~20 (fp32 scan vs fp64 oracle)
CELLS = ("min_gru", "min_lstm")

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def paper_recurrence(mixer: MinRNNMixer, x: torch.Tensor) -> torch.Tensor:
    """minGRU / minLSTM from the paper's equations, sequentially in fp64: ``x [B, T, d_model] -> [B, T, d_model]``."""
    d = mixer.d_inner
    pre = x.double() @ mixer.in_proj.weight.double().T + mixer.in_proj.bias.double()
    h = torch.zeros(x.shape[0], d, dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        cand = pre[:, t, -d:]
        h_tilde = torch.where(cand >= 0, cand + 0.5, 1 / (1 + torch.exp(-cand)))
        if mixer.cell_type == "min_gru":
            z = 1 / (1 + torch.exp(-pre[:, t, :d]))
            h = (1 - z) * h + z * h_tilde
        else:
            f = 1 / (1 + torch.exp(-pre[:, t, :d]))
            i = 1 / (1 + torch.exp(-pre[:, t, d : 2 * d]))
            h = f / (f + i) * h + i / (f + i) * h_tilde
        outs.append(h)
    h_all = torch.stack(outs, 1)
    if isinstance(mixer.out_proj, nn.Linear):
        h_all = h_all @ mixer.out_proj.weight.double().T
    return h_all


def paper_model(model: MinRNN, x: torch.Tensor) -> torch.Tensor:
    """The residual stack around :func:`paper_recurrence` (the model's own norms; no MLP, ``d_ff=0``)."""
    h = model.input_proj(x)
    for block in model.layers:
        h = h + paper_recurrence(block.mixer, block.mixer_norm(h)).float()
    return model.norm(h)  # type: ignore[no-any-return]


def _check_against_paper(name: str) -> None:
    torch.manual_seed(0)
    model = edifice.build(name, d_model=12, n_layers=2, d_in=5, d_ff=0, expand=2).eval()
    x = randn(2, 37, 5, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x=x), paper_model(model, x), **TOL)


@signature("min_gru")
def test_min_gru_matches_paper_recurrence() -> None:
    _check_against_paper("min_gru")


@signature("min_lstm")
def test_min_lstm_matches_paper_recurrence() -> None:
    _check_against_paper("min_lstm")


@pytest.mark.parametrize("cell", CELLS)
def test_parallel_gradients_match_paper_recurrence(cell: str) -> None:
    torch.manual_seed(2)
    mixer = MinRNNMixer(cell, 6, 6)
    x = randn(2, 63, 6, seed=3).requires_grad_()
    cotangent = randn(2, 63, 6, seed=4)
    got = torch.autograd.grad((mixer(x) * cotangent).sum(), [x, mixer.in_proj.weight, mixer.in_proj.bias])
    want = torch.autograd.grad(
        (paper_recurrence(mixer, x) * cotangent.double()).sum(), [x, mixer.in_proj.weight, mixer.in_proj.bias]
    )
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b.float(), **GRAD_TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_sequential_step_equals_parallel_forward_with_gradients(cell: str) -> None:
    torch.manual_seed(5)
    mixer = MinRNNMixer(cell, 8, 16)
    x = randn(3, 7, 8, seed=6)
    cotangent = randn(3, 7, 8, seed=7)
    parallel = mixer(x)
    grads_parallel = torch.autograd.grad((parallel * cotangent).sum(), list(mixer.parameters()))
    state = mixer.init_state(3)
    sequential = torch.cat(
        [mixer(x[:, :3], state=state), mixer(x[:, 3:4], state=state), mixer(x[:, 4:], state=state)], 1
    )
    grads_sequential = torch.autograd.grad((sequential * cotangent).sum(), list(mixer.parameters()))
    torch.testing.assert_close(sequential, parallel, **TOL)
    for a, b in zip(grads_sequential, grads_parallel, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert state.h.shape == (3, 16)  # constant-size state


@pytest.mark.parametrize("cell", CELLS)
def test_left_padding_equals_the_sequence_alone(cell: str) -> None:
    torch.manual_seed(8)
    model = edifice.build(cell, d_model=8, d_in=4, d_ff=16).eval()
    x = randn(2, 9, 4, seed=9)
    mask = torch.tensor([[False] * 3 + [True] * 6, [True] * 9])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        alone = model(x=x[:1, 3:])
    torch.testing.assert_close(got[0, 3:], alone[0], **TOL)


def test_log_scan_mutation_breaks_the_oracle() -> None:
    with mutate_op("log_scan"), pytest.raises(AssertionError):
        _check_against_paper("min_gru")


def test_g_is_positive_continuous_and_log_g_is_its_log() -> None:
    x = torch.linspace(-30, 30, 1001, dtype=torch.float64)
    assert (g(x) > 0).all()
    torch.testing.assert_close(g(torch.tensor([0.0, -1e-9])), torch.tensor([0.5, 0.5]))  # σ(0) = 0 + 1/2
    torch.testing.assert_close(log_g(x), torch.log(torch.where(x >= 0, x + 0.5, 1 / (1 + torch.exp(-x)))))
    assert torch.isfinite(log_g(torch.tensor([-200.0, 200.0]))).all()


def test_config_errors_and_cell_is_fixed() -> None:
    with pytest.raises(edifice.ConfigError, match="cell_type"):
        edifice.build("min_gru", cell_type="min_lstm")
    with pytest.raises(edifice.ConfigError, match="expand"):
        edifice.build("min_lstm", expand=0)
    with pytest.raises(ValueError, match="cell_type must be one of"):
        MinRNNMixer("gru", 4, 4)
