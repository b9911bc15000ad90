"""Tests of ``megalodon`` (Ma et al. 2024, Megalodon).

Signature: one layer equals, in fp64, the paper's equations written out here: the timestep norm from pooled
cumulative moments (§3.2), CEMA as its sequential complex recurrence (§3.1), normalized attention with RoPE within
chunks (§3.3), the reset-gated output and the two-hop residual FFN (§3.4). The ``damped_ema`` mutation (no damping
or rotation), the ``sdpa`` mutation (unmasked) and the ``rms_norm`` mutation break it. The timestep norm alone equals
its formula, also carried over calls and with padding. Decoding: ``step`` reproduces ``forward`` at every prefix.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature
from edifice_attention.megalodon import Megalodon, MegalodonLayer, TimestepNorm

TINY = {"d_model": 16, "n_layers": 2, "n_heads": 2, "ema_dim": 3, "z_dim": 8, "v_dim": 12, "d_ff": 24}
TINY |= {"norm_groups": 4, "vocab_size": 30}


def build(**overrides: object) -> Megalodon:
    torch.manual_seed(0)
    model = edifice.build("megalodon", **{**TINY, **overrides}).eval()
    assert isinstance(model, Megalodon)
    return model


def perturb(module: torch.nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def timestep_norm_oracle(norm: TimestepNorm, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """§3.2: normalise x_t by the mean and variance of every element of its group at valid steps s <= t."""
    B, T, D = x.shape
    G = norm.groups
    out = torch.zeros_like(x)
    for b in range(B):
        for t in range(T):
            if valid is not None and not valid[b, t]:
                continue
            seen = [s for s in range(t + 1) if valid is None or valid[b, s]]
            for g in range(G):
                cols = slice(g * D // G, (g + 1) * D // G)
                pool = x[b, seen, cols]  # all elements of the group so far
                mean, var = pool.mean(), pool.var(unbiased=False)
                out[b, t, cols] = (x[b, t, cols] - mean) / torch.sqrt(var + norm.eps)
    out = out * (1 + norm.weight) + norm.bias
    return out if valid is None else out * valid[..., None]  # padded positions: zeros


def cema_oracle(layer: MegalodonLayer, x: torch.Tensor) -> torch.Tensor:
    """§3.1: h_t = α x_t + (1 - α δ) e^{iθ} h_{t-1}, y_t = Re(η^T h_t) / sqrt(N), plus ω x; a complex loop."""
    e = layer.mixer.cema
    B, T, D = x.shape
    N = e.ndim
    alpha, delta = torch.sigmoid(e.alpha), torch.sigmoid(e.delta)
    theta = torch.sigmoid(e.theta) * (2 * math.pi / N) * torch.arange(1, N + 1, dtype=x.dtype)  # θ_{d,n} = n θ_d
    q = (1 - alpha * delta) * torch.exp(1j * theta)
    eta = torch.complex(e.eta[..., 0], e.eta[..., 1]) / math.sqrt(N)
    h = torch.zeros(B, D, N, dtype=torch.complex128)
    ys = []
    for t in range(T):
        h = alpha * x[:, t, :, None] + q * h
        ys.append((eta * h).sum(-1).real)
    return torch.stack(ys, 1) + e.omega * x


def rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE in rotate-half layout on x [B, T, H, d]: pairs (i, i + d/2) rotated by pos · base^(-2i/d)."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None].double() * inv  # (T, d/2)
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]  # (T, 1, d/2)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


def layer_oracle(layer: MegalodonLayer, x: torch.Tensor, window: int) -> torch.Tensor:
    """One Megalodon layer (§3.1-3.4 with the authors' code where the paper is silent), fp64, no padding."""
    m = layer.mixer
    B, T, d = x.shape
    H, dz, dv = m.n_heads, m.z_head, m.v_head
    Xn = timestep_norm_oracle(m.timenorm, x)  # §3.2
    Xp = rms(cema_oracle(layer, Xn), m.rmsnorm.weight, m.rmsnorm.eps)  # X' = RMSNorm(CEMA(X̂))
    Z = rms((Xp @ m.wz.weight.T + m.wz.bias).view(B, T, H, dz), None, m.znorm.eps).reshape(B, T, -1)
    Q = Z * (1 + m.qk_gain[0]) / math.sqrt(dz) + m.qk_offset[0]  # §3.3 normalized attention
    K = Z * (1 + m.qk_gain[1]) / math.sqrt(dz) + m.qk_offset[1]
    pos = torch.arange(T) % window  # RoPE within the chunk
    Q, K = rope(Q.view(B, T, H, dz), pos, m.rope.base), rope(K.view(B, T, H, dz), pos, m.rope.base)
    V = F.silu(Xn @ m.wv.weight.T + m.wv.bias).view(B, T, H, dv)
    Out = torch.zeros(B, T, H, dv, dtype=x.dtype)
    for i in range(T):
        start = (i // window) * window
        s = torch.einsum("bhd,bjhd->bhj", Q[:, i], K[:, start : i + 1])  # no 1/sqrt(d): Q, K carry the scale
        Out[:, i] = torch.einsum("bhj,bjhd->bhd", torch.softmax(s, -1), V[:, start : i + 1])
    R = F.silu(Xp @ m.wr.weight.T + m.wr.bias)  # reset gate
    Hh = Xp @ m.wh1.weight.T + m.wh1.bias + (Out.reshape(B, T, -1) * R) @ m.wh2.weight.T
    Y = Hh + x
    Yn = F.layer_norm(Y, (d,), layer.ffn_norm.weight, layer.ffn_norm.bias, layer.ffn_norm.eps)
    assert layer.fc1 is not None and layer.fc2 is not None
    return x + F.silu(Yn @ layer.fc1.weight.T) @ layer.fc2.weight.T  # §3.4 two-hop residual: X, not Y


@signature("megalodon")
def test_layer_matches_the_papers_equations_fp64() -> None:
    model = build(window_size=3).double()
    layer = model.layers[0]
    assert isinstance(layer, MegalodonLayer) and layer.final_norm is None
    perturb(layer)
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        got, want = layer(x), layer_oracle(layer, x, 3)
    # ops.sdpa and ops.rms_norm keep fp32 statistics; everything else is fp64.
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("op", ["damped_ema", "sdpa", "rms_norm"])
def test_signature_fails_under_the_mutations(op: str) -> None:
    with mutate_op(op), pytest.raises(AssertionError):
        test_layer_matches_the_papers_equations_fp64()


def test_timestep_norm_is_its_formula_across_calls_and_padding() -> None:
    norm = TimestepNorm(12, 3).double()
    perturb(norm)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 12, generator=gen, dtype=torch.float64) * 3 + 1
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, :2] = False
    valid[1, 5] = False
    want = timestep_norm_oracle(norm, x, valid)
    torch.testing.assert_close(norm(x, mask=valid), want, atol=1e-10, rtol=1e-10)
    state = norm.init_state(2)
    state.count, state.mean, state.var = state.count.double(), state.mean.double(), state.var.double()
    pieces = [norm(x[:, a:b], mask=valid[:, a:b], state=state) for a, b in ((0, 3), (3, 4), (4, 7))]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=1e-10, rtol=1e-10)


def test_timestep_norm_is_causal_unlike_a_group_norm() -> None:
    norm = TimestepNorm(8, 2)
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(4))
    later = x.clone()
    later[:, 4:] *= 5.0
    torch.testing.assert_close(norm(later)[:, :4], norm(x)[:, :4])
    assert (norm(x)[:, -1] - F.group_norm(x.transpose(1, 2), 2).transpose(1, 2)[:, -1]).abs().max() < 1e-5
    assert (norm(x)[:, 0] - F.group_norm(x.transpose(1, 2), 2).transpose(1, 2)[:, 0]).abs().max() > 1e-2


@pytest.mark.parametrize("overrides", [{"window_size": 3}, {"window_size": None, "swiglu": True, "rescale_ffn": True}])
def test_prefill_and_steps_reproduce_forward(overrides: dict[str, object], check_padded_decoding: Any) -> None:
    model = build(**overrides)
    perturb(model, seed=5)
    check_padded_decoding(model, T=10, pad=2, prefill=4, seed=6)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"norm_groups": 5}, "norm_groups"), ({"n_heads": 3}, "z_dim"), ({"z_dim": 6, "n_heads": 2}, "z_dim")],
)
def test_bad_config_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(edifice.ConfigError, match=field):
        edifice.config("megalodon", **{"d_model": 16, "v_dim": 12, "norm_groups": 4, **overrides})
