"""edifice.ops.nystrom_attention: reference vs loop oracle, the pseudo-inverse, the m = T limit, bad arguments."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.nystrom_attention import (
    iterative_pinv,
    nystrom_attention_naive,
    nystrom_attention_reference,
    segment_means_matrix,
)
from edifice.testing.mutate import nystrom_as_softmax_attention

TOL = 1e-5


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def qkv(B: int, H: int, T: int, D: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    return tuple(randn(B, H, T, D, seed=s, dtype=dtype) * 0.7 for s in range(3))


@pytest.mark.parametrize(("T", "m"), [(1, 4), (7, 3), (16, 4), (63, 8), (130, 16)])
def test_reference_matches_naive(T: int, m: int, agree: Any) -> None:
    q, k, v = qkv(2, 2, T, 5)
    agree(nystrom_attention_reference, nystrom_attention_naive, q, k, v, num_landmarks=m, atol=TOL, rtol=TOL)
    got = ops.nystrom_attention(q, k, v, num_landmarks=m)
    torch.testing.assert_close(got, nystrom_attention_reference(q, k, v, num_landmarks=m), atol=0, rtol=0)


def test_segment_means_are_block_means_when_m_divides_t() -> None:
    x = randn(12, 3, seed=4, dtype=torch.float64)
    want = x.view(4, 3, 3).mean(1)  # the paper's eq. (12): l = T / m positions per landmark
    torch.testing.assert_close(segment_means_matrix(12, 4, dtype=torch.float64) @ x, want)


def test_iterative_pinv_converges_to_the_pseudo_inverse() -> None:
    a = (randn(3, 6, 6, seed=5, dtype=torch.float64)).softmax(-1)
    want = torch.linalg.pinv(a)
    err6 = (iterative_pinv(a, 6) - want).abs().max()
    err30 = (iterative_pinv(a, 30) - want).abs().max()
    assert err30 < 1e-9 < err6 or err30 < err6


def test_equals_softmax_attention_when_every_position_is_a_landmark() -> None:
    q, k, v = qkv(2, 2, 9, 4, dtype=torch.float64)
    exact = (q @ k.transpose(-1, -2)).softmax(-1) @ v
    got = ops.nystrom_attention(q, k, v, num_landmarks=9, pinv_iters=40)
    torch.testing.assert_close(got, exact, atol=1e-8, rtol=1e-8)
    far = ops.nystrom_attention(q, k, v, num_landmarks=3)
    assert not torch.allclose(far, exact, atol=1e-3)
    torch.testing.assert_close(nystrom_as_softmax_attention(q, k, v), exact, atol=TOL, rtol=TOL)


def test_bad_arguments() -> None:
    q, k, v = qkv(1, 1, 4, 2)
    with pytest.raises(ValueError, match="num_landmarks"):
        ops.nystrom_attention(q, k, v, num_landmarks=0)
    with pytest.raises(ValueError, match="pinv_iters"):
        ops.nystrom_attention(q, k, v, num_landmarks=2, pinv_iters=-1)
    with pytest.raises(ValueError, match=r"\[B, H, T, D\]"):
        ops.nystrom_attention(q[0], k, v, num_landmarks=2)
    with pytest.raises(TypeError):
        ops.nystrom_attention(q.long(), k, v, num_landmarks=2)
