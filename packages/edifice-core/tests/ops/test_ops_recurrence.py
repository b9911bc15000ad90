"""edifice.ops.linear_recurrence: the parallel scan vs the step loop, an unrolled closed form, exactness, stability."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.recurrence import CHUNK, linear_recurrence_naive, linear_recurrence_reference

TOL = 1e-4  # scans: fp32 summation order differs from the step loop


def draw(*shape: int, seed: int, zeros: float = 0.1) -> torch.Tensor:
    """Decays uniform in [-1, 1] with a fraction of exact zeros (state resets)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(*shape, generator=gen) * 2 - 1
    return a.masked_fill(torch.rand(*shape, generator=gen) < zeros, 0.0)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# name: (a shape, b shape, initial shape or None)
SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | None]] = {
    "T1": ((2, 1, 3), (2, 1, 3), (2, 3)),
    "T7": ((2, 7, 5), (2, 7, 5), None),
    "T63-decay-per-head": ((2, 63, 4, 1), (2, 63, 4, 3), (2, 4, 3)),
    "T100-chunks": ((1, 100, 6), (1, 100, 6), (1, 6)),
    "T1100-two-levels": ((1, 1100, 2), (1, 1100, 2), (1, 2)),
    "a-shared-over-batch": ((1, 40, 3), (2, 40, 3), (2, 3)),
    "T2-no-state-dims": ((3, 2), (3, 2), (3,)),
}


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=list(SHAPES))
def test_reference_matches_naive(shapes: tuple[Any, ...], agree: Any) -> None:
    a_shape, b_shape, h0_shape = shapes
    a, b = draw(*a_shape, seed=0), randn(*b_shape, seed=1)
    args = (a, b) if h0_shape is None else (a, b, randn(*h0_shape, seed=2))
    agree(linear_recurrence_reference, linear_recurrence_naive, *args, atol=TOL, rtol=TOL)
    torch.testing.assert_close(ops.linear_recurrence(*args), linear_recurrence_reference(*args), atol=0, rtol=0)


def test_matches_unrolled_closed_form() -> None:
    # h_t = (prod_{r<=t} a_r) h_0 + sum_{s<=t} (prod_{s<r<=t} a_r) b_s, written as a lower-triangular transfer matrix.
    T = 20
    a, b, h0 = draw(2, T, 3, seed=3, zeros=0.2).double(), randn(2, T, 3, seed=4).double(), randn(2, 3, seed=5).double()
    transfer = torch.zeros(2, T, T, 3, dtype=torch.float64)
    for t in range(T):
        for s in range(t + 1):
            transfer[:, t, s] = a[:, s + 1 : t + 1].prod(dim=1)
    want = torch.einsum("btsd,bsd->btd", transfer, b) + a.cumprod(dim=1) * h0[:, None]
    got = linear_recurrence_reference(a.float(), b.float(), h0.float())
    torch.testing.assert_close(got, want.float(), atol=TOL, rtol=TOL)


def test_zero_decay_resets_exactly() -> None:
    T, t0 = 3 * CHUNK + 5, CHUNK + 3  # the reset sits inside the second chunk
    a, b, h0 = draw(2, T, 4, seed=6, zeros=0.0), randn(2, T, 4, seed=7), randn(2, 4, seed=8)
    a[:, t0] = 0.0
    h = linear_recurrence_reference(a, b, h0)
    assert torch.equal(h[:, t0], b[:, t0])
    # Nothing before the reset can reach past it.
    b2 = b.clone()
    b2[:, :t0] = randn(2, t0, 4, seed=9)
    h2 = linear_recurrence_reference(a, b2, -h0)
    assert torch.equal(h[:, t0:], h2[:, t0:])


def test_unit_decay_is_exact_and_stable_over_long_sequences() -> None:
    T = 3000  # three levels of chunks
    ones = torch.ones(1, T, 2)
    counts = linear_recurrence_reference(ones, ones, torch.full((1, 2), 5.0))
    assert torch.equal(counts[0, :, 0], torch.arange(6, T + 6, dtype=torch.float32))
    flip = -torch.ones(1, T, 1)  # |a| = 1 with alternating sign: h_t alternates between 1 and 0
    alt = linear_recurrence_reference(flip, torch.ones(1, T, 1))
    assert torch.equal(alt[0, :, 0], (torch.arange(T) % 2 == 0).float())
    # Slow decay accumulates a long history; the error stays at fp32 rounding of the largest state (fp64 truth).
    a, b = 0.999 * torch.ones(1, T, 3), randn(1, T, 3, seed=10)
    truth = linear_recurrence_naive(a.double(), b.double())
    error = (linear_recurrence_reference(a, b).double() - truth).abs().max()
    assert error <= 1e-5 * truth.abs().max()


def test_dtypes(relative_l2: Any) -> None:
    a, b, h0 = draw(2, 63, 8, seed=11), randn(2, 63, 8, seed=12), randn(2, 8, seed=13)
    want = linear_recurrence_reference(a, b, h0)
    half = ops.linear_recurrence(a.bfloat16(), b.bfloat16(), h0.bfloat16())
    assert half.dtype == torch.bfloat16
    assert relative_l2(half, want) <= 2e-2
    assert ops.linear_recurrence(a, b.bfloat16()).dtype == torch.float32  # promoted, like a * h + b
    leaves = [t.bfloat16().requires_grad_() for t in (a, b, h0)]
    ops.linear_recurrence(*leaves).float().sum().backward()
    assert all(leaf.grad is not None and torch.isfinite(leaf.grad).all() for leaf in leaves)


@pytest.mark.parametrize(
    ("a", "b", "initial", "error", "match"),
    [
        (torch.zeros(4), torch.zeros(4), None, ValueError, r"b must be \[B, T, \.\.\.\] \(at least 2-D\), got \[4\]"),
        (torch.zeros(2, 5), torch.zeros(2, 5, 3), None, ValueError, r"a must be \[B, T, \.\.\.\]"),
        (torch.zeros(2, 4, 3), torch.zeros(2, 5, 3), None, ValueError, r"with T=5, broadcastable to b \[2, 5, 3\]"),
        (torch.zeros(2, 5, 2), torch.zeros(2, 5, 3), None, ValueError, r"got \[2, 5, 2\]"),
        (
            torch.zeros(2, 5, 3),
            torch.zeros(2, 5, 3),
            torch.zeros(2, 5, 3),
            ValueError,
            r"initial must be \[B, \.\.\.\]",
        ),
        (torch.zeros(2, 5, 3), torch.zeros(2, 5, 3, dtype=torch.long), None, TypeError, r"b must be a floating-point"),
    ],
)
def test_invalid_arguments_raise_clear_errors(
    a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ops.linear_recurrence(a, b, initial)
