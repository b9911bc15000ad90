"""Tests of ``transformer_like`` (slippi-ai's ``tx_like``) against ``docs/design/transformer_like.md`` eqs. (1)-(6).

The oracle runs the documented equations position by position in fp64: ``torch.nn.LSTMCell``/``GRUCell`` steps with
the model's weights, the norms and the FFN written out by hand (no Edifice block, no ``edifice.ops``). A generic layer
in place of the recurrent sub-layer, or a norm/FFN in the wrong place, cannot match it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edifice
from edifice.blocks.activations import activation_names
from edifice.blocks.ffn import FeedForward
from edifice.testing import signature
from edifice_recurrent.configs.transformer_like import ACTIVATIONS
from edifice_recurrent.rnn import RNNLayer
from edifice_recurrent.transformer_like import TransformerLike

TOL = {"atol": 1e-5, "rtol": 1e-4}
EPS = 1e-6

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def build(seed: int = 0, randomize: bool = True, **overrides: object) -> TransformerLike:
    """A small model; ``randomize`` draws every parameter ~ N(0, 0.3²) so the zero-init FFN outputs matter too."""
    torch.manual_seed(seed)
    fields = {"d_model": 8, "n_layers": 2, "d_in": 5, "ffn_multiplier": 2, **overrides}
    model: TransformerLike = edifice.build("transformer_like", **fields)  # type: ignore[assignment]
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def norm64(x: torch.Tensor, module: nn.Module, kind: str) -> torch.Tensor:
    """LayerNorm ``(x - mean) / sqrt(var + eps) * w + b`` or RMSNorm ``x / sqrt(mean(x²) + eps) * w``, in fp64."""
    if isinstance(module, nn.Identity):
        return x
    w = module.weight.double()
    if kind == "layernorm":
        centred = x - x.mean(-1, keepdim=True)
        return centred / torch.sqrt(centred.square().mean(-1, keepdim=True) + EPS) * w + module.bias.double()
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + EPS) * w


def rnn64(layer: RNNLayer, x: torch.Tensor) -> torch.Tensor:
    """The recurrent sub-layer as ``torch.nn.LSTMCell``/``GRUCell`` steps with ``layer``'s weights, in fp64."""
    rnn = layer.cell
    cell = (nn.LSTMCell if layer.cell_type == "lstm" else nn.GRUCell)(rnn.input_size, rnn.hidden_size).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, f"{name}_l0"))
    h = c = torch.zeros(x.shape[0], rnn.hidden_size, dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        if layer.cell_type == "lstm":
            h, c = cell(x[:, t], (h, c))
        else:
            h = cell(x[:, t], h)
        outs.append(h)
    return torch.stack(outs, 1)


ACTS = {"gelu": F.gelu, "relu": torch.relu, "tanh": torch.tanh, "silu": F.silu}


def documented_model(model: TransformerLike, x: torch.Tensor) -> torch.Tensor:
    """Eqs. (1)-(6) in fp64 with the model's parameters."""
    c = model.config
    h = x.double()
    if c.d_in is not None:
        enc = model.input_proj
        assert isinstance(enc, nn.Linear)
        h = h @ enc.weight.double().T + enc.bias.double()  # eq. (1)
    for block in model.layers:
        assert isinstance(block.mixer, RNNLayer) and isinstance(block.ffn, FeedForward)
        g = h + rnn64(block.mixer, norm64(h, block.mixer_norm, c.norm) if c.recurrent_norm else h)  # eqs. (2)-(3)
        up, down = block.ffn.up_proj, block.ffn.down_proj
        hidden = ACTS[c.activation](norm64(g, block.ffn_norm, c.norm) @ up.weight.double().T + up.bias.double())
        h = g + hidden @ down.weight.double().T + down.bias.double()  # eqs. (4)-(5)
    return norm64(h, model.norm, c.norm) if c.final_norm else h  # eq. (6)


CASES = [
    {"cell_type": "lstm", "norm": "layernorm", "recurrent_norm": False, "final_norm": False, "activation": "gelu"},
    {"cell_type": "gru", "norm": "rmsnorm", "recurrent_norm": True, "final_norm": True, "activation": "relu"},
    {"cell_type": "lstm", "norm": "rmsnorm", "recurrent_norm": False, "final_norm": True, "activation": "tanh"},
    {"cell_type": "gru", "norm": "layernorm", "recurrent_norm": True, "final_norm": False, "activation": "silu"},
]


@signature("transformer_like")
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_matches_the_documented_equations(case: dict[str, object]) -> None:
    model = build(seed=1, **case)
    x = randn(3, 11, 5, seed=2)
    with torch.no_grad():
        want = documented_model(model, x).float()
        torch.testing.assert_close(model(x=x), want, **TOL)
        # Decoding: a prefill then single steps reproduce every position.
        state = model.init_state(3)
        got = torch.cat(
            [model.step(x[:, :4], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(4, 11)], 1
        )
    torch.testing.assert_close(got, want, **TOL)


def test_ffn_outputs_start_at_zero_and_reset_restores_them() -> None:
    model = build(seed=3, randomize=True)
    model.reset_parameters()
    for block in model.layers:
        assert isinstance(block.ffn, FeedForward)
        assert not block.ffn.down_proj.weight.any() and not block.ffn.down_proj.bias.any()
        assert block.ffn.up_proj.weight.std() > 0
    # At init each layer is h + RNN(h): the FFN branches add nothing.
    x = randn(2, 6, 5, seed=4)
    with torch.no_grad():
        h = model.input_proj(x)
        for block in model.layers:
            h = h + block.mixer(h)
        torch.testing.assert_close(model(x=x), h, atol=0, rtol=0)


def test_padding_left_and_right_equals_each_sequence_alone() -> None:
    model = build(seed=5, recurrent_norm=True)
    x = randn(3, 9, 5, seed=6)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3, [False] * 2 + [True] * 7])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        for b in range(3):
            alone = model(x=x[b : b + 1, mask[b]])
            torch.testing.assert_close(got[b, mask[b]], alone[0], **TOL)


def test_stepping_is_differentiable_like_forward() -> None:
    model = build(seed=7, cell_type="gru").train()
    x = randn(2, 5, 5, seed=8)
    cotangent = randn(2, 5, 8, seed=9)
    want = torch.autograd.grad((model(x=x) * cotangent).sum(), list(model.parameters()))
    state = model.init_state(2)
    y = torch.cat([model.step(x[:, :3], state)[0], model.step(x[:, 3:], state)[0]], 1)
    got = torch.autograd.grad((y * cotangent).sum(), list(model.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_config_aliases_and_errors() -> None:
    cfg = edifice.config("transformer_like", embed_dim=7, hidden_size=12, num_layers=3, ffw_multiplier=2)
    assert (cfg.d_in, cfg.d_model, cfg.n_layers, cfg.ffn_multiplier) == (7, 12, 3, 2)
    assert edifice.config("transformer_like", recurrent_layer="gru").cell_type == "gru"
    for field, value in (("cell_type", "rnn"), ("norm", "batchnorm"), ("activation", "swishy"), ("ffn_multiplier", 0)):
        with pytest.raises(edifice.ConfigError, match=f"'{field}'"):
            edifice.config("transformer_like", **{field: value})
    assert set(ACTIVATIONS) <= set(activation_names())
    lm = edifice.build("transformer_like", d_model=8, vocab_size=13, output="last")
    assert lm(input_ids=torch.randint(0, 13, (2, 4))).shape == (2, 13)
    with pytest.raises(edifice.InputError, match=r"expected \[B, T, 5\]"):
        build()(x=torch.zeros(2, 4, 6))


@pytest.mark.parametrize("cell_type", ["lstm", "gru"])
def test_initialisation_is_sonnets(cell_type: str) -> None:
    # slippi-ai's TF TransformerLike builds snt.Linear, snt.LSTM/snt.GRU at their defaults: truncated normal (±2σ, std
    # 0.88σ) with σ = 1/√fan_in, zero biases, and the LSTM's forget_bias=1.0 (PyTorch's gate order: i, f, g, o).
    torch.manual_seed(0)
    model = edifice.build("transformer_like", d_in=40, d_model=96, cell_type=cell_type)
    assert isinstance(model.input_proj, nn.Linear)
    for linear in (model.input_proj, model.layers[0].ffn.up_proj):
        fan_in = linear.in_features
        assert abs(float(linear.weight.detach().std()) * fan_in**0.5 / 0.8796 - 1) < 0.05 and not linear.bias.any()
    cell = model.layers[0].mixer.module()
    for weight in (cell.weight_ih_l0.detach(), cell.weight_hh_l0.detach()):
        assert float(weight.abs().max()) <= 2 / 96**0.5 and abs(float(weight.std()) * 96**0.5 / 0.8796 - 1) < 0.05
    forget = torch.zeros_like(cell.bias_ih_l0)
    if cell_type == "lstm":
        forget[96:192] = 1.0
    assert torch.equal(cell.bias_ih_l0.detach(), forget) and not cell.bias_hh_l0.any()
