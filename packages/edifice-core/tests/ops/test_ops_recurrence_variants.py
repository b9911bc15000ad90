"""The scan-algorithm variants of the linear recurrence: a single Hillis–Steele scan and chunked log-space cumulative
sums, against the step loop (outputs and gradients), and the cumsum variant at the ends of its accepted range."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from edifice.ops.recurrence import (
    CUMSUM_CHUNK,
    linear_recurrence_cumsum,
    linear_recurrence_hillis_steele,
    linear_recurrence_naive,
)

TOL = 1e-4


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def log_decays(*shape: int, seed: int) -> torch.Tensor:
    """Log decays in [-3, 0]: decays in [0.05, 1]."""
    return -3 * torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def cumsum_as_naive(log_a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
    """The step-loop oracle on the decays ``exp(log_a)``."""
    return linear_recurrence_naive(log_a.exp(), b, initial)


# name: (decay shape, b shape, initial shape or None)
SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | None]] = {
    "T1": ((2, 1, 3), (2, 1, 3), (2, 3)),
    "T7": ((2, 7, 5), (2, 7, 5), None),
    "T63-D60": ((1, 63, 60), (1, 63, 60), (1, 60)),
    "T40-decay-per-head": ((2, 40, 4, 1), (2, 40, 4, 3), (2, 4, 3)),
    "T100-decay-shared-over-batch": ((1, 100, 2), (2, 100, 2), (2, 2)),
}


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=list(SHAPES))
def test_hillis_steele_matches_naive(shapes: tuple[Any, ...], agree: Any) -> None:
    a_shape, b_shape, h0_shape = shapes
    a = log_decays(*a_shape, seed=0).exp() * torch.sign(randn(*a_shape, seed=9))  # signed decays are fine here
    args = [a, randn(*b_shape, seed=1)] + ([] if h0_shape is None else [randn(*h0_shape, seed=2)])
    agree(linear_recurrence_hillis_steele, linear_recurrence_naive, *args, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=list(SHAPES))
def test_cumsum_matches_naive(shapes: tuple[Any, ...], agree: Any) -> None:
    a_shape, b_shape, h0_shape = shapes
    args = [log_decays(*a_shape, seed=3), randn(*b_shape, seed=4)]
    args += [] if h0_shape is None else [randn(*h0_shape, seed=5)]
    agree(linear_recurrence_cumsum, cumsum_as_naive, *args, atol=TOL, rtol=TOL)


def test_cumsum_unit_decays_over_a_long_sequence_are_exact() -> None:
    # Upper end of the range, log a = 0 (no forgetting), over many chunks: h_t is an exact running count.
    T = 2000
    h = linear_recurrence_cumsum(torch.zeros(1, T, 2), torch.ones(1, T, 2), torch.full((1, 2), 3.0))
    assert torch.equal(h[0, :, 0], torch.arange(4, T + 4, dtype=torch.float32))


@pytest.mark.parametrize("log_a", [-torch.inf, -1e30, -1e4])
def test_cumsum_complete_forgetting_is_exact(log_a: float) -> None:
    # Lower end of the range: a = exp(log a) = 0 forgets everything, so h_t = b_t exactly, with finite gradients.
    T = 3 * CUMSUM_CHUNK + 5
    la = torch.full((2, T, 3), log_a, requires_grad=True)
    b = randn(2, T, 3, seed=6).requires_grad_(True)
    h = linear_recurrence_cumsum(la, b, randn(2, 3, seed=7))
    assert torch.equal(h, b.detach())
    h.sum().backward()
    assert la.grad is not None and b.grad is not None
    assert torch.isfinite(la.grad).all() and torch.equal(b.grad, torch.ones_like(b))


def test_cumsum_mixed_extremes_do_not_overflow_or_cancel() -> None:
    # Huge cumulative decay before tiny ones inside one chunk: a difference of running sums would cancel
    # (|L| ~ 1e4 leaves ~1e-3 of precision); the segment sums keep the late decays exact.
    T = CUMSUM_CHUNK
    la = torch.full((1, T, 1), -1e-3)
    la[:, :3] = -5e3
    b = torch.ones(1, T, 1)
    h = linear_recurrence_cumsum(la, b)
    want = linear_recurrence_naive(la.double().exp(), b.double())
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h.double(), want, atol=1e-5, rtol=1e-6)


def test_variants_check_their_arguments() -> None:
    with pytest.raises(ValueError, match=r"b must be \[B, T, ...\]"):
        linear_recurrence_cumsum(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="initial"):
        linear_recurrence_hillis_steele(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), torch.zeros(2, 5))
