"""Attention and CrossAttention against a dense softmax formula written here, plus KV-cache decoding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edifice.blocks.attention import Attention, CrossAttention
from edifice.blocks.rope import RotaryEmbedding
from edifice.testing.tol import FP32, SCAN, assert_close

D_MODEL, B, T = 16, 2, 7


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial weights, biases and norm gains (the default init leaves biases small and gains at one)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _rotate(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE in the rotate-half layout from its definition: pair (i, i + d/2) rotated by pos * base^(-2i/d)."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[:, None] * theta  # (T, d/2)
    c = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double()) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat([c.real, c.imag], dim=-1).to(x.dtype)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich 2019, eq. 4) over the last dimension."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _heads(proj: nn.Linear, x: torch.Tensor, n: int) -> torch.Tensor:
    return proj(x).view(x.shape[0], x.shape[1], n, -1).transpose(1, 2)


def _oracle(
    att: Attention | CrossAttention,
    x: torch.Tensor,
    kv: torch.Tensor,
    *,
    allowed: torch.Tensor,
    pos: torch.Tensor | None = None,
    rope_base: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Vaswani eq. (1) per head with explicit GQA head sharing; ``allowed [B, Tq, Tk]`` bool."""
    q, k, v = (
        _heads(att.q_proj, x, att.n_heads),
        _heads(att.k_proj, kv, att.n_kv_heads),
        _heads(att.v_proj, kv, att.n_kv_heads),
    )
    if att.q_norm is not None:
        q, k = _rms(q, att.q_norm.weight), _rms(k, att.k_norm.weight)
    if rope_base is not None and pos is not None:
        q, k = _rotate(q, pos, rope_base), _rotate(k, pos, rope_base)
    group = att.n_heads // att.n_kv_heads
    outs = []
    for h in range(att.n_heads):
        kh, vh = k[:, h // group], v[:, h // group]
        s = q[:, h] @ kh.transpose(-1, -2) / math.sqrt(att.head_dim)  # (B, Tq, Tk)
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(~allowed, float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
        outs.append(p @ vh)
    return att.o_proj(torch.cat(outs, dim=-1))


def _causal(Tq: int, Tk: int, window: int | None = None) -> torch.Tensor:
    i, j = torch.arange(Tq)[:, None] + (Tk - Tq), torch.arange(Tk)[None]
    allowed = j <= i
    if window is not None:
        allowed &= i - j < window
    return allowed.expand(B, Tq, Tk)


@pytest.mark.parametrize(
    ("n_heads", "n_kv_heads", "window", "softcap", "qk_norm"),
    [(4, 4, None, None, False), (4, 2, None, None, True), (4, 1, 3, None, False), (2, 2, None, 5.0, False)],
)
def test_self_attention_matches_formula(
    n_heads: int, n_kv_heads: int, window: int | None, softcap: float | None, qk_norm: bool
) -> None:
    att = Attention(
        D_MODEL, n_heads, n_kv_heads=n_kv_heads, window=window, softcap=softcap, qk_norm=qk_norm, bias=True
    ).eval()
    _randomise(att)
    x = torch.randn(B, T, D_MODEL, generator=_gen(1))
    expected = _oracle(att, x, x, allowed=_causal(T, T, window), softcap=softcap)
    assert_close(att(x), expected, FP32)


def test_rope_is_applied_to_queries_and_keys() -> None:
    att = Attention(D_MODEL, 2, rope=RotaryEmbedding(8, base=100.0)).eval()
    _randomise(att)
    x = torch.randn(B, T, D_MODEL, generator=_gen(2))
    pos = torch.arange(3, 3 + T)
    expected = _oracle(att, x, x, allowed=_causal(T, T), pos=pos, rope_base=100.0)
    assert_close(att(x, positions=pos), expected, FP32)


def test_non_causal_attention_sees_everything() -> None:
    att = Attention(D_MODEL, 4, causal=False).eval()
    _randomise(att)
    x = torch.randn(B, T, D_MODEL, generator=_gen(3))
    assert_close(att(x), _oracle(att, x, x, allowed=torch.ones(B, T, T, dtype=torch.bool)), FP32)


def test_padding_mask_equals_dropping_the_pads() -> None:
    """Left padding with positions counted over valid tokens gives the unpadded result at the valid positions."""
    att = Attention(D_MODEL, 4, n_kv_heads=2, rope=RotaryEmbedding(4)).eval()
    _randomise(att)
    x = torch.randn(1, T, D_MODEL, generator=_gen(4))
    pad = 3
    padded = torch.cat([torch.randn(1, pad, D_MODEL, generator=_gen(5)), x], dim=1)
    mask = torch.tensor([[False] * pad + [True] * T])
    positions = mask.long().cumsum(-1) - 1
    out = att(padded, mask=mask, positions=positions)
    assert_close(out[:, pad:], att(x), FP32)
    assert torch.isfinite(out).all(), "fully masked pad rows must give zeros, not NaN"


@pytest.mark.parametrize("max_len", [None, 12])
@pytest.mark.parametrize("window", [None, 3])
def test_cache_prefill_and_steps_match_full_attention(max_len: int | None, window: int | None) -> None:
    att = Attention(D_MODEL, 4, n_kv_heads=2, window=window, rope=RotaryEmbedding(4)).eval()
    _randomise(att)
    x = torch.randn(B, T, D_MODEL, generator=_gen(6))
    full = att(x)
    cache = att.init_state(B, max_len=max_len)
    outs = [att(x[:, :4], positions=torch.arange(4), state=cache)]
    for t in range(4, T):
        outs.append(att(x[:, t : t + 1], positions=torch.tensor([t]), state=cache))
    assert_close(torch.cat(outs, dim=1), full, SCAN)
    assert cache.keys.shape[2] == (max_len or T)


def test_cross_attention_matches_formula_with_context_mask() -> None:
    att = CrossAttention(D_MODEL, 4, d_context=6, n_kv_heads=2).eval()
    _randomise(att)
    x = torch.randn(B, T, D_MODEL, generator=_gen(7))
    context = torch.randn(B, 5, 6, generator=_gen(8))
    context_mask = torch.tensor([[True] * 5, [True, True, False, True, False]])
    expected = _oracle(att, x, context, allowed=context_mask[:, None, :].expand(B, T, 5))
    assert_close(att(x, context, context_mask=context_mask), expected, FP32)


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4"):
        Attention(D_MODEL, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="must divide d_model"):
        Attention(10, 4)
    with pytest.raises(ValueError, match=r"rope\.head_dim"):
        Attention(D_MODEL, 4, rope=RotaryEmbedding(8))
    att = Attention(D_MODEL, 4)
    with pytest.raises(ValueError, match=r"x expected \[B, T, 16\]"):
        att(torch.zeros(B, T, 8))
    with pytest.raises(ValueError, match=r"bool tensor \[2, 7\]"):
        att(torch.zeros(B, T, D_MODEL), mask=torch.ones(B, T))
    with pytest.raises(ValueError, match="positions are required"):
        att(torch.zeros(B, T, D_MODEL), state=att.init_state(B))
    with pytest.raises(ValueError, match="batch"):
        CrossAttention(D_MODEL, 4)(torch.zeros(B, T, D_MODEL), torch.zeros(B + 1, 3, D_MODEL))


def test_head_dim_can_differ_from_d_model_over_heads() -> None:
    att = Attention(D_MODEL, 2, head_dim=5, causal=False).eval()
    assert att.q_proj.out_features == 10
    assert att.o_proj.in_features == 10
    x = torch.randn(B, T, D_MODEL, generator=_gen(9))
    assert_close(att(x), _oracle(att, x, x, allowed=torch.ones(B, T, T, dtype=torch.bool)), FP32)
