"""Tests of ``native_recurrence``: every ``recurrence_type`` against its equations (docs/design/native_recurrence.md).

The oracle writes each recurrence out one step at a time in fp64 from the layers' weights -- sigmoids, ELU, powers
and square roots in linear space, no logarithms and no scan -- around the model's own block structure (LayerNorm
recomputed in fp64). The parallel ``forward`` (``ops.log_scan`` / ``ops.linear_recurrence``) must match it, and the
sequential ``step`` must match ``forward``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edifice
from edifice.testing import mutate_op, signature
from edifice_recurrent.configs.native_recurrence import RECURRENCE_TYPES
from edifice_recurrent.min_rnn import MinRNNMixer
from edifice_recurrent.native_recurrence import NativeRecurrence, NativeRecurrenceMixer, log_one_plus_elu

TOL = {"atol": 1e-5, "rtol": 1e-4}
GRAD_TOL = {"atol": 1e-4, "rtol": 1e-4}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-x))


def recurrence_oracle(mixer: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """The design note's table, one step at a time in fp64: ``u [B, T, d_model]`` -> ``[B, T, d_model]``."""
    assert isinstance(mixer, MinRNNMixer | NativeRecurrenceMixer)
    kind = mixer.cell_type if isinstance(mixer, MinRNNMixer) else mixer.recurrence_type
    D = mixer.d_inner
    bias = mixer.in_proj.bias.double() if mixer.in_proj.bias is not None else 0.0
    pre = u.double() @ mixer.in_proj.weight.double().T + bias  # (B, T, (gates + 1) * D)
    h = torch.zeros(u.shape[0], D, dtype=torch.float64)
    outs = []
    for t in range(u.shape[1]):
        k, v = pre[:, t, :D], pre[:, t, -D:]
        if kind == "min_gru":  # h = (1 - z) h + z g(v)
            z = _sigmoid(k)
            h = (1 - z) * h + z * torch.where(v >= 0, v + 0.5, _sigmoid(v))
        elif kind == "min_lstm":  # h = f/(f+i) h + i/(f+i) g(v)
            f, i = _sigmoid(k), _sigmoid(pre[:, t, D : 2 * D])
            h = f / (f + i) * h + i / (f + i) * torch.where(v >= 0, v + 0.5, _sigmoid(v))
        elif kind == "elu_gru":  # c = 1 + ELU(v)
            z = _sigmoid(k)
            h = (1 - z) * h + z * (1 + torch.where(v > 0, v, torch.exp(v) - 1))
        elif kind == "real_gru":  # c = v
            z = _sigmoid(k)
            h = (1 - z) * h + z * v
        elif kind == "diag_linear":  # h = σ(k) h + v
            h = _sigmoid(k) * h + v
        else:  # rg_lru, Griffin eqs. 1-4
            assert isinstance(mixer, NativeRecurrenceMixer) and mixer.log_a_param is not None
            r, i = _sigmoid(k), _sigmoid(pre[:, t, D : 2 * D])
            a = _sigmoid(mixer.log_a_param.double()) ** (mixer.rg_lru_c * r)
            h = a * h + torch.sqrt(1 - a**2) * (i * v)
        outs.append(h)
    h_all = torch.stack(outs, 1)
    if isinstance(mixer.out_proj, nn.Linear):
        h_all = h_all @ mixer.out_proj.weight.double().T
    return h_all


def _layer_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), norm.weight.double(), norm.bias.double(), norm.eps)


def model_oracle(model: NativeRecurrence, x: torch.Tensor) -> torch.Tensor:
    """The residual stack around :func:`recurrence_oracle`, all in fp64 (LayerNorm, no MLP)."""
    proj = model.input_proj
    assert isinstance(proj, nn.Linear)
    h = x.double() @ proj.weight.double().T + proj.bias.double()
    for block in model.layers:
        h = h + recurrence_oracle(block.mixer, _layer_norm(block.mixer_norm, h))
    return _layer_norm(model.norm, h)


def build(kind: str, seed: int, **overrides: object) -> NativeRecurrence:
    torch.manual_seed(seed)
    options = {"d_model": 12, "n_layers": 2, "d_in": 5, "expand": 2, "recurrence_type": kind, **overrides}
    model = edifice.build("native_recurrence", **options).eval()
    assert isinstance(model, NativeRecurrence)
    return model


def check_against_oracle(kind: str, T: int = 37) -> None:
    model = build(kind, seed=0)
    x = randn(2, T, 5, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x=x).double(), model_oracle(model, x), **TOL)


def check_step_equals_scan(kind: str) -> None:
    model = build(kind, seed=2, expand=1)
    x = randn(3, 9, 5, seed=3)
    cotangent = randn(3, 9, 12, seed=4)
    parallel = model(x=x)
    grads_parallel = torch.autograd.grad((parallel * cotangent).sum(), list(model.parameters()))
    state = model.init_state(3)
    pieces = [model.step(x[:, :3], state)[0], model.step(x[:, 3:4], state)[0], model.step(x[:, 4:], state)[0]]
    stepped = torch.cat(pieces, 1)  # type: ignore[arg-type]
    grads_stepped = torch.autograd.grad((stepped * cotangent).sum(), list(model.parameters()))
    torch.testing.assert_close(stepped, parallel, **TOL)
    for a, b in zip(grads_stepped, grads_parallel, strict=True):
        torch.testing.assert_close(a, b, **GRAD_TOL)  # the contract's scan tolerance: summation orders differ
    assert [layer.h.shape for layer in state.layers] == [(3, 12), (3, 12)]  # constant-size state


@signature("native_recurrence")
@pytest.mark.parametrize("kind", RECURRENCE_TYPES)
def test_parallel_forward_matches_the_stepwise_equations(kind: str) -> None:
    check_against_oracle(kind)


@signature("native_recurrence")
@pytest.mark.parametrize("kind", RECURRENCE_TYPES)
def test_sequential_step_equals_parallel_scan_with_gradients(kind: str) -> None:
    check_step_equals_scan(kind)


@pytest.mark.parametrize("kind", RECURRENCE_TYPES)
def test_parallel_gradients_match_the_stepwise_equations(kind: str) -> None:
    model = build(kind, seed=5, n_layers=1)
    mixer = model.layers[0].mixer
    x = randn(2, 40, 12, seed=6).requires_grad_()
    cotangent = randn(2, 40, 12, seed=7)
    params = [x, *mixer.parameters()]
    got = torch.autograd.grad((mixer(x) * cotangent).sum(), params)
    want = torch.autograd.grad((recurrence_oracle(mixer, x) * cotangent.double()).sum(), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b.float(), **GRAD_TOL)


@pytest.mark.parametrize("kind", RECURRENCE_TYPES)
def test_left_and_right_padding_equal_the_sequence_alone(kind: str) -> None:
    model = build(kind, seed=8, d_ff=16)
    x = randn(2, 9, 5, seed=9)
    mask = torch.tensor([[False] * 3 + [True] * 6, [True] * 6 + [False] * 3])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        torch.testing.assert_close(got[0, 3:], model(x=x[:1, 3:])[0], **TOL)
        torch.testing.assert_close(got[1, :6], model(x=x[1:, :6])[0], **TOL)


def test_scan_mutations_break_the_oracle() -> None:
    for op, kind in (("log_scan", "elu_gru"), ("linear_recurrence", "rg_lru"), ("linear_recurrence", "real_gru")):
        with mutate_op(op), pytest.raises(AssertionError):
            check_against_oracle(kind, T=9)


def test_types_choose_the_scan_their_signs_allow() -> None:
    # Positive b_t (minGRU, minLSTM, ELU-GRU) trains in log space; signed b_t needs the linear scan.
    for kind in RECURRENCE_TYPES:
        op = "log_scan" if kind in ("min_gru", "min_lstm", "elu_gru") else "linear_recurrence"
        reference = getattr(edifice.ops, op).reference
        calls = []

        def counting(*args: object, _impl: Any = reference, _calls: list[int] = calls, **kwargs: object) -> Any:
            _calls.append(1)
            return _impl(*args, **kwargs)

        with edifice.ops.swap(op, counting):
            build(kind, seed=10)(x=randn(1, 4, 5, seed=11))
        assert len(calls) == 2, kind  # one scan per layer


@torch.no_grad()
def test_rg_lru_init_spreads_the_decay_over_0_9_to_0_999() -> None:
    torch.manual_seed(12)
    mixer = NativeRecurrenceMixer("rg_lru", 8, 4096)
    assert mixer.log_a_param is not None
    a_c = torch.sigmoid(mixer.log_a_param.double()) ** 8.0
    assert a_c.min() >= 0.9 - 1e-6 and a_c.max() <= 0.999 + 1e-6
    assert abs(float(a_c.mean()) - 0.9495) < 0.003  # U[0.9, 0.999]
    assert abs(float((a_c < 0.9495).double().mean()) - 0.5) < 0.03


def test_rg_lru_stays_finite_when_the_decay_reaches_one() -> None:
    mixer = NativeRecurrenceMixer("rg_lru", 6, 6)
    with torch.no_grad():
        mixer.in_proj.bias[:6] = -200.0  # r = σ(-200) ~ 0, so a_t = 1 - tiny and sqrt(1 - a²) -> 0
    x = randn(2, 5, 6, seed=13).requires_grad_()
    y = mixer(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters())


def test_log_one_plus_elu_is_the_log_of_the_positive_candidate() -> None:
    v = torch.linspace(-5, 40, 2001, dtype=torch.float64)
    torch.testing.assert_close(log_one_plus_elu(v), torch.log(1 + F.elu(v)))
    # Below zero 1 + ELU(v) = exp(v): the log is v itself, where log(1 + ELU(v)) would round to log(0).
    v = torch.linspace(-100, 0, 101, dtype=torch.float64)
    assert torch.equal(log_one_plus_elu(v), v)
    assert torch.isfinite(log_one_plus_elu(torch.tensor([-1e4, 1e4]))).all()


def test_config_errors() -> None:
    with pytest.raises(edifice.ConfigError, match=r"recurrence_type.*rg_lru"):
        edifice.config("native_recurrence", recurrence_type="rg_lr")
    with pytest.raises(edifice.ConfigError, match="expand"):
        edifice.config("native_recurrence", expand=0)
    with pytest.raises(edifice.ConfigError, match="d_ff"):
        edifice.config("native_recurrence", d_ff=-1)
    with pytest.raises(ValueError, match="MinRNNMixer"):
        NativeRecurrenceMixer("min_gru", 4, 4)
    config = edifice.config("native_recurrence", embed_dim=7, hidden_size=24, num_layers=3, mlp_dim=48)
    assert (config.d_in, config.d_model, config.n_layers, config.d_ff) == (7, 24, 3, 48)
