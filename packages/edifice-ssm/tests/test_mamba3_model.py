"""mamba3 beyond the oracle: decoding at every prefix, chunked == recurrent, padding, the Mamba-2 special case,
initialisation, configs and input errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice import ops
from edifice.ops.mimo_ssd import mimo_ssd_naive
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm.mamba3 import Mamba3, Mamba3Mixer, Mamba3State, rotate_pairs

TOKENS = {"vocab_size": 30, "d_in": None}


def build(**overrides: Any) -> Mamba3:
    torch.manual_seed(0)
    config = {**edifice.get_spec("mamba3").tiny, "n_layers": 2, **overrides}
    model = edifice.build("mamba3", **config).eval()
    assert isinstance(model, Mamba3)
    with torch.no_grad():  # larger steps than the init's, so that decay, rotation and the trapezoid all matter
        for block in model.layers:
            block.mixer.dt_bias.uniform_(-1.0, 1.0)
    return model


def inputs(model: Mamba3, batch: int, T: int, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    if c.vocab_size is not None:
        return torch.randint(0, c.vocab_size, (batch, T), generator=gen)
    return torch.randn(batch, T, c.d_in or c.d_model, generator=gen)


def call(model: Mamba3, u: Tensor, mask: Tensor | None = None) -> Tensor:
    out = model(**{model.primary_input: u, "attention_mask": mask})
    assert isinstance(out, Tensor)
    return out


@pytest.mark.parametrize("overrides", [{}, {**TOKENS, "mimo_rank": 1, "d_ff": 16}], ids=["mimo", "siso-tokens-mlp"])
@pytest.mark.parametrize("pieces", [(1,) * 7, (3, 1, 3), (2, 5)], ids=["steps", "prefill", "chunks"])
def test_step_equals_forward_at_every_prefix(overrides: dict[str, Any], pieces: tuple[int, ...]) -> None:
    model = build(**overrides)
    u = inputs(model, 2, sum(pieces))
    with torch.no_grad():
        full = call(model, u)
        state = model.init_state(2)
        shapes = [tuple(t.shape for t in (s.ssm, s.k, s.x, s.angle)) for s in state.layers]
        start, outs = 0, []
        for n in pieces:
            y, state = model.step(u[:, start : start + n], state)
            outs.append(y)
            start += n
            assert [tuple(t.shape for t in (s.ssm, s.k, s.x, s.angle)) for s in state.layers] == shapes
    assert_close(torch.cat(outs, dim=1), full, SCAN, name="stepped")  # type: ignore[arg-type]


def test_state_layout() -> None:
    model = build()
    state = model.init_state(3, dtype=torch.bfloat16)
    layer = state.layers[0]
    assert isinstance(layer, Mamba3State)
    c = model.config
    assert layer.ssm.shape == (3, c.n_heads, c.head_dim, c.d_state)
    assert layer.k.shape == (3, c.mimo_rank, c.n_heads, c.d_state)
    assert layer.x.shape == (3, c.n_heads, c.head_dim)
    assert layer.angle.shape == (3, c.n_heads, c.n_angles)
    assert all(t.dtype == torch.float32 for t in (layer.ssm, layer.k, layer.x, layer.angle))  # states stay fp32


def test_chunked_and_recurrent_forms_agree_in_the_model() -> None:
    """The chunked scan (forward) and the op's step loop give the same model outputs; the chunk size is invisible."""
    model = build(chunk_size=3)
    u = inputs(model, 2, 13)
    with torch.no_grad():
        chunked = call(model, u)
        with ops.swap("mimo_ssd", mimo_ssd_naive):
            recurrent = call(model, u)
        assert_close(chunked, recurrent, SCAN, name="chunked vs recurrent")
        for size in (1, 5, 64):
            assert_close(call(build(chunk_size=size), u), chunked, SCAN, name=f"chunk_size={size}")


@pytest.mark.parametrize("overrides", [{}, TOKENS], ids=["features", "tokens"])
def test_left_and_right_padding_with_a_mask_equal_the_unpadded_run(
    overrides: dict[str, Any], padding_is_invisible: Callable[[nn.Module], None]
) -> None:
    padding_is_invisible(build(**overrides))


def test_batched_decoding_of_a_left_padded_prompt(left_padded_batch_decodes_alone: Callable[[nn.Module], None]) -> None:
    """Row 0's prompt is 2 positions shorter (left-padded); each row decodes as if it were alone."""
    left_padded_batch_decodes_alone(build(**TOKENS))


def test_euler_real_rank_one_is_mamba2_ssd() -> None:
    """λ = 1 (trapezoidal=False), no rotation and rank 1, with a constant A, is Mamba-2's SSD (ops.ssd) + gate."""
    torch.manual_seed(5)
    m = Mamba3Mixer(8, d_state=6, head_dim=4, n_groups=2, mimo_rank=1, trapezoidal=False, complex_state=False,
                    chunk_size=4).eval()  # fmt: skip
    H, P, N = m.n_heads, m.head_dim, m.d_state
    with torch.no_grad():
        m.dt_bias.uniform_(-1.0, 1.0)
        m.B_bias.normal_()
        m.C_bias.normal_()
        m.D.normal_()
        a_rows = slice(sum(m.split_sizes[:5]), sum(m.split_sizes[:6]))
        m.in_proj.weight[a_rows] = 0.0  # A_t = -softplus(0) = -log 2 for every head and position
    u = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(6))
    z, x, Bp, Cp, dd_dt, *_ = m.in_proj(u).split(m.split_sizes, dim=-1)
    group = torch.arange(H) // (H // m.n_groups)
    B = m.B_norm(Bp.reshape(2, 10, m.n_groups, N))[:, :, group] + m.B_bias[:, 0]  # (B, T, H, N): per-head bias
    C = m.C_norm(Cp.reshape(2, 10, m.n_groups, N))[:, :, group] + m.C_bias[:, 0]
    dt = F.softplus(dd_dt + m.dt_bias)
    A = torch.full((H,), -math.log(2.0))
    y = ops.ssd(x.reshape(2, 10, H, P), dt, A, B, C, chunk_size=3, D=m.D)
    want = m.out_proj((y * F.silu(z.reshape(2, 10, H, P))).reshape(2, 10, H * P))
    with torch.no_grad():
        assert_close(m(u), want.detach(), SCAN, name="Mamba-3 (Euler, real, SISO) vs Mamba-2 SSD")


def test_rotation_is_complex_multiplication_of_the_pairs() -> None:
    v = torch.randn(1, 2, 1, 3, 6, generator=torch.Generator().manual_seed(7))
    angle = torch.rand(1, 2, 3, 2, generator=torch.Generator().manual_seed(8)) * 6
    got = rotate_pairs(v, angle)
    pairs = torch.complex(v[..., 0:4:2], v[..., 1:4:2]) * torch.exp(1j * angle.unsqueeze(2))
    torch.testing.assert_close(got[..., 0:4:2], pairs.real)
    torch.testing.assert_close(got[..., 1:4:2], pairs.imag)
    torch.testing.assert_close(got[..., 4:], v[..., 4:])  # rope_fraction < 1: the other dimensions pass through


def test_initialisation_follows_the_reference() -> None:
    torch.manual_seed(0)
    model = edifice.build("mamba3", d_model=64, n_layers=2, head_dim=4, d_state=8, mimo_rank=4, d_ff=32)
    c = model.config
    for block in model.layers:
        mixer = block.mixer.requires_grad_(False)
        dt = F.softplus(mixer.dt_bias)  # 32 heads
        assert bool(((dt >= c.dt_min * (1 - 1e-4)) & (dt <= c.dt_max * (1 + 1e-4))).all())
        assert abs(float(dt.log().mean()) - (math.log(c.dt_min) + math.log(c.dt_max)) / 2) < 0.8
        for name in ("B_bias", "C_bias", "D", "mimo_z"):
            assert torch.equal(getattr(mixer, name), torch.ones_like(getattr(mixer, name))), name
        for name in ("mimo_x", "mimo_o"):
            assert torch.equal(getattr(mixer, name), torch.full_like(getattr(mixer, name), 1 / 4)), name
        assert torch.equal(mixer.B_norm.weight, torch.ones(8))
        # out_proj and the MLP's down_proj: nn.Linear's U(±1/sqrt(fan_in)) over sqrt(2 branches x 2 layers).
        for weight, fan_in in ((mixer.out_proj.weight, c.d_inner), (block.ffn.down_proj.weight, c.d_ff)):
            bound = 1 / math.sqrt(fan_in) / 2
            assert 0.8 * bound < float(weight.detach().abs().max()) <= bound
    assert model.config.n_angles == 2 and model.config.n_heads == 32


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"head_dim": 5}, "must divide d_inner"),
        ({"n_groups": 3}, "must divide the number of heads"),
        ({"rope_fraction": 0.25}, "rope_fraction"),
        ({"d_state": 2}, "too small to rotate"),
        ({"dt_min": 0.5}, "must be <= dt_max"),
        ({"mimo_rank": 0}, "mimo_rank"),
        ({"d_ff": -1}, "d_ff"),
    ],
)
def test_invalid_configs_raise_config_errors(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(edifice.ConfigError, match=match):
        edifice.config("mamba3", **{**edifice.get_spec("mamba3").tiny, **overrides})


def test_original_option_names_are_accepted() -> None:
    config = edifice.config(
        "mamba3", state_size=16, expand_factor=2, hidden_size=32, num_layers=1, rank=2, complex=False, embed_dim=5
    )
    assert (config.d_state, config.expand, config.d_model, config.n_layers) == (16, 2, 32, 1)
    assert (config.mimo_rank, config.complex_state, config.d_in, config.n_angles) == (2, False, 5, 0)
    model = edifice.build("mamba3", d_model=8, d_state=4, head_dim=4, complex=False, rope_fraction=1.0)
    assert model(torch.randn(1, 3, 8)).shape == (1, 3, 8)


def test_bad_inputs_raise_input_errors() -> None:
    model = build()
    with pytest.raises(edifice.InputError, match=r"input 'x' expected \[B, T, 12\]"):
        model(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="head_dim=3 must divide d_inner=16"):
        Mamba3Mixer(8, head_dim=3)
    with pytest.raises(ValueError, match=r"rope_fraction must be 0\.5 or 1\.0"):
        Mamba3Mixer(8, head_dim=4, rope_fraction=0.3)


def test_gradient_checkpointing_keeps_the_gradients() -> None:
    model = build(d_ff=8).train()
    u = inputs(model, 2, 6)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        call(model, u).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
