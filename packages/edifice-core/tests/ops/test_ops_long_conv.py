"""edifice.ops.long_conv: FFT reference vs the direct sum, vs F.conv1d, dtypes, odd shapes and bad arguments."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from edifice import ops
from edifice.ops.long_conv import long_conv_naive, long_conv_reference
from edifice.testing.mutate import circular_long_conv

TOL = 1e-5


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(
    ("T", "D", "L", "per_batch", "skip"),
    [(1, 3, 1, False, True), (7, 60, 7, False, False), (63, 4, 63, True, True), (7, 5, 3, False, True),
     (5, 2, 9, True, False)],
)  # fmt: skip
def test_reference_matches_naive(T: int, D: int, L: int, per_batch: bool, skip: bool, agree: Any) -> None:
    B = 2
    u = randn(B, T, D, seed=0)
    k = randn(*((B,) if per_batch else ()), D, L, seed=1) / L**0.5
    s = randn(D, seed=2) if skip else None
    agree(long_conv_reference, long_conv_naive, u, k, s, atol=TOL, rtol=TOL)
    torch.testing.assert_close(ops.long_conv(u, k, s), long_conv_reference(u, k, s), atol=0, rtol=0)


def test_matches_grouped_conv1d() -> None:
    # Independent formula: a depthwise conv1d with the flipped kernel, padded on the left only.
    B, T, D = 2, 11, 4
    u, k = randn(B, T, D, seed=3), randn(D, T, seed=4)
    want = F.conv1d(F.pad(u.transpose(1, 2), (T - 1, 0)), k.flip(-1).unsqueeze(1), groups=D).transpose(1, 2)
    torch.testing.assert_close(ops.long_conv(u, k), want, atol=TOL, rtol=TOL)


def test_impulse_response_is_the_kernel_and_the_skip() -> None:
    T, D = 9, 3
    u = torch.zeros(1, T, D)
    u[0, 0] = 1.0
    k, skip = randn(D, 20, seed=5), randn(D, seed=6)
    y = ops.long_conv(u, k, skip)
    expected = k[:, :T].T.clone()
    expected[0] += skip
    torch.testing.assert_close(y[0], expected, atol=TOL, rtol=TOL)


def test_is_causal_unlike_a_circular_convolution() -> None:
    T, D = 8, 2
    u, k = randn(1, T, D, seed=7), randn(D, T, seed=8)
    later = u.clone()
    later[:, 5:] += 1.0
    torch.testing.assert_close(ops.long_conv(later, k)[:, :5], ops.long_conv(u, k)[:, :5], atol=TOL, rtol=TOL)
    wrapped = circular_long_conv(later, k) - circular_long_conv(u, k)
    assert wrapped[:, :5].abs().max() > 1e-2  # the mutation is a real one: the future leaks into the past


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    u, k = randn(2, 7, 3, seed=9, dtype=dtype), randn(3, 7, seed=10, dtype=dtype)
    y = ops.long_conv(u, k)
    assert y.dtype == dtype
    want = long_conv_naive(u.double(), k.double())
    tol = 1e-12 if dtype == torch.float64 else 3e-2
    torch.testing.assert_close(y.double(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize(
    ("u", "k", "skip", "message"),
    [
        (torch.zeros(2, 5), torch.zeros(3, 5), None, r"u must be \[B, T, D\]"),
        (torch.zeros(2, 5, 3), torch.zeros(4, 5), None, r"k must be \[D, L\] or \[B, D, L\] with B=2, D=3"),
        (torch.zeros(2, 5, 3), torch.zeros(3, 3, 5), None, r"with B=2"),
        (torch.zeros(2, 5, 3), torch.zeros(3, 5), torch.zeros(2), r"skip must be \[D\] = \[3\]"),
    ],
)
def test_bad_arguments(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ops.long_conv(u, k, skip)


def test_integer_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        ops.long_conv(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(3, 2))
