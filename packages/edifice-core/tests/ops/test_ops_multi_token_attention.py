"""edifice.ops.multi_token_attention: reference vs the paper's loop oracle (fp64), identity kernels, causality,
decoding rows, the mutation, bad arguments."""

from __future__ import annotations

import pytest
import torch

from edifice import ops
from edifice.ops.attention import sdpa_reference
from edifice.ops.multi_token_attention import multi_token_attention_naive, multi_token_attention_reference
from edifice.testing.mutate import multi_token_attention_without_convolution

TOL = 1e-10


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def identity(H: int, c_q: int, c_k: int, c_h: int) -> tuple[torch.Tensor, torch.Tensor]:
    kq = torch.zeros(H, c_q, c_k, dtype=torch.float64)
    kq[:, c_q - 1, (c_k + 1) // 2 - 1] = 1.0
    return kq, torch.eye(c_h, dtype=torch.float64).repeat(H // c_h, 1, 1)


@pytest.mark.parametrize(("T", "c_q", "c_k", "c_h", "kv"), [(1, 2, 3, 2, 4), (7, 3, 4, 2, 2), (9, 2, 5, 4, 4)])
def test_reference_matches_the_papers_equations(T: int, c_q: int, c_k: int, c_h: int, kv: int) -> None:
    q, k, v = randn(2, 4, T, 3, seed=0), randn(2, kv, T, 3, seed=1), randn(2, kv, T, 2, seed=2)
    kq, hw = randn(4, c_q, c_k, seed=3), randn(4 // c_h, c_h, c_h, seed=4)
    for args in ((kq, hw), (kq, None), (None, hw)):
        want = multi_token_attention_naive(q, k, v, *args)
        torch.testing.assert_close(multi_token_attention_reference(q, k, v, *args), want, atol=TOL, rtol=TOL)
        torch.testing.assert_close(ops.multi_token_attention(q, k, v, *args), want, atol=TOL, rtol=TOL)


def test_padding_mask_and_positions_match_the_oracle() -> None:
    q, k, v = randn(2, 2, 6, 3, seed=5), randn(2, 2, 6, 3, seed=6), randn(2, 2, 6, 3, seed=7)
    kq, hw = randn(2, 2, 3, seed=8), randn(1, 2, 2, seed=9)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., :2] = False
    want = multi_token_attention_naive(q, k, v, kq, hw, attn_mask=mask)
    torch.testing.assert_close(multi_token_attention_reference(q, k, v, kq, hw, attn_mask=mask), want)


def test_identity_kernels_are_plain_causal_softmax_attention() -> None:
    q, k, v = randn(2, 4, 11, 5, seed=10), randn(2, 2, 11, 5, seed=11), randn(2, 2, 11, 5, seed=12)
    kq, hw = identity(4, 3, 5, 2)
    kr, vr = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    future = torch.ones(11, 11, dtype=torch.bool).triu(1)
    want = ((q @ kr.transpose(-1, -2)) * 5**-0.5).masked_fill(future, float("-inf")).softmax(-1) @ vr  # fp64
    torch.testing.assert_close(sdpa_reference(q, k, v, causal=True), want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ops.multi_token_attention(q, k, v, kq, hw), want, atol=TOL, rtol=TOL)
    torch.testing.assert_close(multi_token_attention_without_convolution(q, k, v, kq, hw), want, atol=TOL, rtol=TOL)
    other = ops.multi_token_attention(q, k, v, randn(4, 3, 5, seed=13), hw)
    assert not torch.allclose(other, want, atol=1e-3)


def test_causal_and_last_rows_give_a_decoding_step() -> None:
    T, c_q = 10, 3
    q, k, v = randn(1, 2, T, 4, seed=14), randn(1, 2, T, 4, seed=15), randn(1, 2, T, 4, seed=16)
    kq, hw = randn(2, c_q, 4, seed=17), randn(1, 2, 2, seed=18)
    full = ops.multi_token_attention(q, k, v, kq, hw)
    k2 = k.clone()
    k2[:, :, -1] += 1.0  # the last key changes: no earlier query may notice
    torch.testing.assert_close(ops.multi_token_attention(q, k2, v, kq, hw)[:, :, :-1], full[:, :, :-1])
    for t in range(T):  # the last c_q queries against the first t + 1 keys give row t exactly
        rows = q[:, :, max(0, t - c_q + 1) : t + 1]
        step = ops.multi_token_attention(rows, k[:, :, : t + 1], v[:, :, : t + 1], kq, hw)
        torch.testing.assert_close(step[:, :, -1], full[:, :, t], atol=TOL, rtol=TOL)


def test_bad_arguments_raise() -> None:
    q = randn(1, 4, 3, 2, seed=19)
    with pytest.raises(ValueError, match="kq_weight"):
        ops.multi_token_attention(q, q, q, randn(3, 2, 2, seed=0))
    with pytest.raises(ValueError, match="head_weight"):
        ops.multi_token_attention(q, q, q, None, randn(1, 3, 3, seed=0))
    with pytest.raises(ValueError, match="Hk"):
        ops.multi_token_attention(q, randn(1, 3, 3, 2, seed=0), randn(1, 3, 3, 2, seed=0))
