"""Tests of ``deep_res_lstm`` (slippi-ai's ``res_lstm``) against ``docs/design/deep_res_lstm.md`` eqs. (1)-(4).

The oracle runs the documented equations position by position in fp64: ``torch.nn.LSTMCell`` steps with the model's
weights, the norm and the decoder written out by hand (no Edifice block, no ``edifice.ops``). A generic layer in place
of the pre-normed LSTM, or a missing decoder, cannot match it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edifice
from edifice.testing import signature
from edifice_recurrent._res_rnn import ProjectedRNN
from edifice_recurrent.deep_res_lstm import DeepResLSTM

TOL = {"atol": 1e-5, "rtol": 1e-4}
EPS = 1e-6

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def build(seed: int = 0, randomize: bool = True, **overrides: object) -> DeepResLSTM:
    """A small model; ``randomize`` draws every parameter ~ N(0, 0.3²) so the zero-init decoders matter too."""
    torch.manual_seed(seed)
    fields = {"d_model": 8, "n_layers": 2, "d_in": 5, **overrides}
    model: DeepResLSTM = edifice.build("deep_res_lstm", **fields)  # type: ignore[assignment]
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def norm64(x: torch.Tensor, module: nn.Module, kind: str) -> torch.Tensor:
    """LayerNorm ``(x - mean) / sqrt(var + eps) * w + b`` or RMSNorm ``x / sqrt(mean(x²) + eps) * w``, in fp64."""
    w = module.weight.double()
    if kind == "layernorm":
        centred = x - x.mean(-1, keepdim=True)
        return centred / torch.sqrt(centred.square().mean(-1, keepdim=True) + EPS) * w + module.bias.double()
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + EPS) * w


def lstm64(rnn: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.LSTMCell`` steps in fp64 with the weights of the one-layer ``rnn``."""
    cell = nn.LSTMCell(rnn.input_size, rnn.hidden_size).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, f"{name}_l0"))
    h = c = torch.zeros(x.shape[0], rnn.hidden_size, dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        h, c = cell(x[:, t], (h, c))
        outs.append(h)
    return torch.stack(outs, 1)


def documented_model(model: DeepResLSTM, x: torch.Tensor) -> torch.Tensor:
    """Eqs. (1)-(4) in fp64 with the model's parameters."""
    c = model.config
    enc = model.input_proj
    assert isinstance(enc, nn.Linear)
    h = x.double() @ enc.weight.double().T + enc.bias.double()  # eq. (1)
    for block in model.layers:
        assert isinstance(block.mixer, ProjectedRNN)
        a = lstm64(block.mixer.rnn.cell, norm64(h, block.mixer_norm, c.norm))  # eq. (2)
        dec = block.mixer.out_proj
        h = h + a @ dec.weight.double().T + dec.bias.double()  # eq. (3)
    return norm64(h, model.norm, c.norm) if c.final_norm else h  # eq. (4)


@signature("deep_res_lstm")
@pytest.mark.parametrize(("norm", "final_norm"), [("layernorm", False), ("rmsnorm", True)])
def test_matches_the_documented_equations(norm: str, final_norm: bool) -> None:
    model = build(seed=1, norm=norm, final_norm=final_norm)
    x = randn(3, 10, 5, seed=2)
    with torch.no_grad():
        want = documented_model(model, x).float()
        torch.testing.assert_close(model(x=x), want, **TOL)
        state = model.init_state(3)
        got = torch.cat(
            [model.step(x[:, :3], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(3, 10)], 1
        )
    torch.testing.assert_close(got, want, **TOL)


def test_starts_as_its_encoder_and_reset_restores_the_zero_decoders() -> None:
    model = build(seed=3, randomize=True)
    model.reset_parameters()
    for block in model.layers:
        assert isinstance(block.mixer, ProjectedRNN)
        assert not block.mixer.out_proj.weight.any() and not block.mixer.out_proj.bias.any()
    x = randn(2, 6, 5, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(x=x), model.input_proj(x), atol=0, rtol=0)  # y = h^0 at init


def test_padding_left_and_right_equals_each_sequence_alone() -> None:
    model = build(seed=5)
    x = randn(3, 9, 5, seed=6)
    mask = torch.tensor([[True] * 9, [True] * 4 + [False] * 5, [False] * 3 + [True] * 6])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        for b in range(3):
            alone = model(x=x[b : b + 1, mask[b]])
            torch.testing.assert_close(got[b, mask[b]], alone[0], **TOL)


def test_config_aliases_and_errors() -> None:
    cfg = edifice.config("deep_res_lstm", embed_dim=7, hidden_size=12, num_layers=3)
    assert (cfg.d_in, cfg.d_model, cfg.n_layers) == (7, 12, 3)
    with pytest.raises(edifice.ConfigError, match="'norm'"):
        edifice.config("deep_res_lstm", norm="batchnorm")
    with pytest.raises(edifice.ConfigError, match="unknown option 'cell_type'"):
        edifice.config("deep_res_lstm", cell_type="gru")
    with pytest.raises(edifice.InputError, match=r"expected \[B, T, 5\]"):
        build()(x=torch.zeros(2, 4, 6))


def test_initialisation_is_sonnets() -> None:
    # slippi-ai builds snt.Linear and snt.LSTM at their defaults: truncated normal (±2σ, std 0.88σ) with σ = 1/√fan_in,
    # zero biases, and the LSTM's forget_bias=1.0 on the forget gate's bias (PyTorch's gate order: i, f, g, o).
    torch.manual_seed(0)
    model = edifice.build("deep_res_lstm", d_in=40, d_model=96, n_layers=2)
    assert isinstance(model.input_proj, torch.nn.Linear)
    encoder = model.input_proj.weight.detach()
    assert abs(float(encoder.std()) * 40**0.5 / 0.8796 - 1) < 0.05 and not model.input_proj.bias.any()
    for block in model.layers:
        cell = block.mixer.rnn.module()
        for weight in (cell.weight_ih_l0.detach(), cell.weight_hh_l0.detach()):
            assert float(weight.abs().max()) <= 2 / 96**0.5 and abs(float(weight.std()) * 96**0.5 / 0.8796 - 1) < 0.05
        forget = torch.zeros(4 * 96)
        forget[96:192] = 1.0
        assert torch.equal(cell.bias_ih_l0.detach(), forget) and not cell.bias_hh_l0.any()
