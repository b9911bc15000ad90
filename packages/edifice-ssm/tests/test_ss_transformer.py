"""ss_transformer: the model against eqs. (1)-(5) of docs/design/ss_transformer.md in fp64, the gate's defining
property, decoding, padding, initialisation, configs and errors.

The oracle writes attention (projections, RoPE, causal window mask, softmax), the Mamba branch (direct causal
convolution and the per-step selective recurrence) and the sigmoid gate out with plain tensor algebra, no
``edifice.ops``; a mutated ``sdpa``, ``selective_scan``, ``causal_conv1d`` (through the stepped run) or ``rms_norm``
fails the signature tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice.testing import signature
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm.ss_transformer import GatedParallelMixer, GatedParallelState, SSTransformer

TOL = {"atol": 1e-4, "rtol": 1e-4}
TOKENS = {"vocab_size": 30, "d_in": None}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def rms(v: Tensor, weight: Tensor, eps: float) -> Tensor:
    return v / torch.sqrt(v.square().mean(-1, keepdim=True) + eps) * weight.double()


def attention(mixer: GatedParallelMixer, u: Tensor) -> Tensor:
    """Eq. (1): RoPE multi-head (grouped-query) causal attention with the window, then ``W_O``."""
    att = mixer.attn
    B, T, _ = u.shape
    H, Hk, D = att.n_heads, att.n_kv_heads, att.head_dim
    q = (u @ att.q_proj.weight.double().T).view(B, T, H, D).transpose(1, 2)
    k = (u @ att.k_proj.weight.double().T).view(B, T, Hk, D).transpose(1, 2)
    v = (u @ att.v_proj.weight.double().T).view(B, T, Hk, D).transpose(1, 2)
    inv_freq = 1.0 / att.rope.base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)  # type: ignore[union-attr]
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rotate(x: Tensor) -> Tensor:
        return x * cos + torch.cat([-x[..., D // 2 :], x[..., : D // 2]], -1) * sin

    q, k = rotate(q), rotate(k).repeat_interleave(H // Hk, dim=1)
    v = v.repeat_interleave(H // Hk, dim=1)
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (s <= t) & ((t - s < att.window) if att.window is not None else True)
    probs = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~allowed, float("-inf")), -1)
    return (probs @ v).transpose(1, 2).reshape(B, T, H * D) @ att.o_proj.weight.double().T


def ssm(mixer: GatedParallelMixer, u: Tensor) -> Tensor:
    """Eq. (2): Mamba's conv -> SiLU -> h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t, y_t = C_t h_t + D x_t, gate, W_out."""
    m = mixer.ssm
    B, T, _ = u.shape
    xs, z = (u @ m.in_proj.weight.double().T).chunk(2, dim=-1)
    w, bias = m.conv1d.weight.double()[:, 0], m.conv1d.bias.double()
    K = w.shape[1]
    history = torch.cat([xs.new_zeros(B, K - 1, xs.shape[-1]), xs], 1)
    x = F.silu(torch.stack([(history[:, t : t + K] * w.T).sum(1) + bias for t in range(T)], 1))
    dt_low, Bm, Cm = (x @ m.x_proj.weight.double().T).split([m.dt_rank, m.d_state, m.d_state], -1)
    delta = F.softplus(dt_low @ m.dt_proj.weight.double().T + m.dt_proj.bias.double())
    A = -torch.exp(m.A_log.double())
    h = torch.zeros(B, xs.shape[-1], m.d_state, dtype=torch.float64)
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bm[:, t, None, :] * x[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + m.D.double() * x[:, t])
    return (torch.stack(ys, 1) * F.silu(z)) @ m.out_proj.weight.double().T


def paper_mixer(mixer: GatedParallelMixer, u: Tensor) -> Tensor:
    """Eqs. (3)-(4) without the residual: ``g a + (1 - g) s`` with ``g = σ(u W_g + b_g)``."""
    u = u.double()
    g = torch.sigmoid(u @ mixer.gate.weight.double().T + mixer.gate.bias.double())
    return g * attention(mixer, u) + (1 - g) * ssm(mixer, u)


def paper_model(model: SSTransformer, u: Tensor) -> Tensor:
    eps = model.config.norm_eps
    h = u.double() @ model.input_proj.weight.double().T + model.input_proj.bias.double()  # type: ignore[union-attr]
    for block in model.layers:
        h = h + paper_mixer(block.mixer, rms(h, block.mixer_norm.weight, eps))  # (4)
        g, ffn = rms(h, block.ffn_norm.weight, eps), block.ffn
        hidden = F.silu(g @ ffn.gate_proj.weight.double().T) * (g @ ffn.up_proj.weight.double().T)
        h = h + hidden @ ffn.down_proj.weight.double().T  # (5)
    return rms(h, model.norm.weight, eps)  # type: ignore[arg-type]


def build(**overrides: Any) -> SSTransformer:
    torch.manual_seed(0)
    config = {**edifice.get_spec("ss_transformer").tiny, "n_layers": 2, **overrides}
    model = edifice.build("ss_transformer", **config).eval()
    assert isinstance(model, SSTransformer)
    with torch.no_grad():  # an input-dependent gate (zero at init), larger SSM steps, non-trivial skips
        gen = torch.Generator().manual_seed(1)
        for block in model.layers:
            block.mixer.gate.weight.normal_(0.0, 0.5, generator=gen)
            block.mixer.gate.bias.normal_(0.0, 0.5, generator=gen)
            block.mixer.ssm.dt_proj.bias.uniform_(-1.0, 1.0, generator=gen)
            block.mixer.ssm.D.uniform_(0.5, 1.5, generator=gen)
    return model


def inputs(model: SSTransformer, batch: int, T: int, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    if c.vocab_size is not None:
        return torch.randint(0, c.vocab_size, (batch, T), generator=gen)
    return torch.randn(batch, T, c.d_in or c.d_model, generator=gen)


def call(model: SSTransformer, u: Tensor, mask: Tensor | None = None) -> Tensor:
    out = model(**{model.primary_input: u, "attention_mask": mask})
    assert isinstance(out, Tensor)
    return out


@signature("ss_transformer")
@pytest.mark.parametrize("window", [None, 3], ids=["full", "window"])
def test_model_matches_the_design_equations_forward_and_decoding(window: int | None) -> None:
    model = build(window=window, n_kv_heads=1)
    u = inputs(model, 2, 10, seed=2)
    want = paper_model(model, u)
    with torch.no_grad():
        torch.testing.assert_close(call(model, u).double(), want, **TOL)
        state = model.init_state(2)
        outs = [model.step(u[:, :4], state)[0]] + [model.step(u[:, t : t + 1], state)[0] for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(outs, 1).double(), want, **TOL)  # type: ignore[arg-type]


@signature("ss_transformer")
def test_the_gate_routes_between_attention_and_the_ssm() -> None:
    """Saturating the gate's bias gives the attention-only (g = 1) or SSM-only (g = 0) mixer, exactly as eq. (4)."""
    model = build()
    mixer = model.layers[0].mixer
    u = inputs(model, 2, 8, seed=3).new_empty(2, 8, 16).normal_(generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(mixer(u).double(), paper_mixer(mixer, u), **TOL)
        state = mixer.init_state(2)  # the mixer alone, decoded in three chunks: KV cache and SSM state carry over
        chunks = [mixer(u[:, a:b], positions=torch.arange(a, b), state=state) for a, b in ((0, 3), (3, 4), (4, 8))]
        torch.testing.assert_close(torch.cat(chunks, 1).double(), paper_mixer(mixer, u), **TOL)
        mixer.gate.weight.zero_()
        mixer.gate.bias.fill_(40.0)
        torch.testing.assert_close(mixer(u).double(), attention(mixer, u.double()), **TOL)
        mixer.gate.bias.fill_(-40.0)
        torch.testing.assert_close(mixer(u).double(), ssm(mixer, u.double()), **TOL)
        mixer.gate.bias.zero_()  # g = 1/2: the plain average, the initial state of the gate
        want = (attention(mixer, u.double()) + ssm(mixer, u.double())) / 2
        torch.testing.assert_close(mixer(u).double(), want, **TOL)


@pytest.mark.parametrize("overrides", [{}, TOKENS], ids=["features", "tokens"])
@pytest.mark.parametrize("pieces", [(1,) * 7, (4, 1, 2)], ids=["steps", "prefill"])
def test_step_equals_forward_at_every_prefix(overrides: dict[str, Any], pieces: tuple[int, ...]) -> None:
    model = build(**overrides)
    u = inputs(model, 2, sum(pieces))
    with torch.no_grad():
        full = call(model, u)
        for max_len in (None, 7):
            state = model.init_state(2, max_len=max_len)
            start, outs = 0, []
            for n in pieces:
                y, state = model.step(u[:, start : start + n], state)
                outs.append(y)
                start += n
            assert_close(torch.cat(outs, dim=1), full, SCAN, name=f"stepped, max_len={max_len}")  # type: ignore[arg-type]
    layer = state.layers[0]
    assert isinstance(layer, GatedParallelState)
    assert layer.ssm.ssm.dtype == torch.float32 and layer.attn.keys.shape[2] == 7


@pytest.mark.parametrize("overrides", [{}, TOKENS], ids=["features", "tokens"])
def test_left_and_right_padding_with_a_mask_equal_the_unpadded_run(
    overrides: dict[str, Any], padding_is_invisible: Callable[[nn.Module], None]
) -> None:
    padding_is_invisible(build(**overrides))


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = edifice.build("ss_transformer", d_model=32, n_layers=2, n_heads=4, **TOKENS)
    scale = math.sqrt(2 * 2)
    for block in model.layers:
        mixer = block.mixer
        assert not mixer.gate.weight.detach().any() and not mixer.gate.bias.detach().any()  # g = 1/2 at init
        outputs = ((mixer.attn.o_proj.weight, 32), (mixer.ssm.out_proj.weight, 64), (block.ffn.down_proj.weight, 128))
        for weight, fan_in in outputs:
            bound = 1 / math.sqrt(fan_in) / scale
            assert 0.8 * bound < float(weight.detach().abs().max()) <= bound
        torch.testing.assert_close(-torch.exp(mixer.ssm.A_log.detach()[0]), -torch.arange(1.0, 17.0))  # S4D-real
        dt = F.softplus(mixer.ssm.dt_proj.bias.detach())  # Mamba's log-uniform Δ in [1e-3, 0.1]
        assert bool(((dt >= 0.001 * (1 - 1e-4)) & (dt <= 0.1 * (1 + 1e-4))).all())
    assert abs(float(model.embed_tokens.weight.detach().std()) - 0.02) < 0.005  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"n_heads": 3}, "n_heads"),
        ({"n_kv_heads": 3, "n_heads": 4}, "n_kv_heads"),
        ({"head_dim": 5}, "even for the rotary embedding"),
        ({"window": 0}, "window"),
        ({"d_ff": -2}, "d_ff"),
        ({"d_state": 0}, "d_state"),
    ],
)
def test_invalid_configs_raise_config_errors(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(edifice.ConfigError, match=match):
        edifice.config("ss_transformer", **{**edifice.get_spec("ss_transformer").tiny, **overrides})


def test_original_option_names_are_accepted() -> None:
    config = edifice.config(
        "ss_transformer", embed_dim=5, hidden_size=32, state_size=8, num_layers=2, num_heads=4, head_dim=8,
        expand_factor=3, conv_size=2, dropout=0.1, window_size=16,
    )  # fmt: skip
    assert (config.d_in, config.d_model, config.d_state, config.n_layers, config.n_heads) == (5, 32, 8, 2, 4)
    assert (config.head_dim, config.expand, config.d_conv, config.dropout, config.window) == (8, 3, 2, 0.1, 16)


def test_bad_inputs_raise_input_errors() -> None:
    model = build()
    with pytest.raises(edifice.InputError, match=r"input 'x' expected \[B, T, 6\]"):
        model(torch.randn(2, 5, 7))
    attn, ssm_branch = model.layers[0].mixer.attn, model.layers[1].mixer.ssm
    with pytest.raises(ValueError, match="attention width 16 != SSM width 8"):
        GatedParallelMixer(attn, type(ssm_branch)(8))
