"""edifice.ops.log_scan: Heinsen's log-space scan vs the step loop, a linear-space closed form, long sequences."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from edifice import ops
from edifice.ops.log_scan import CHUNK, log_scan_naive, log_scan_reference
from edifice.testing.mutate import no_decay_log_scan

TOL = 1e-4  # scans: fp32 summation order differs from the step loop


def log_decay(*shape: int, seed: int) -> torch.Tensor:
    """log a_t for a_t = sigmoid(N(0, 2)) in (0, 1): the forget gates of minGRU/minLSTM."""
    return -F.softplus(-2 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# name: (log_a shape, log_b shape, log_initial shape or None)
SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | None]] = {
    "T1": ((2, 1, 3), (2, 1, 3), (2, 3)),
    "T7": ((2, 7, 5), (2, 7, 5), None),
    "T63-D60": ((2, 63, 60), (2, 63, 60), (2, 60)),
    "T63-decay-per-head": ((2, 63, 4, 1), (2, 63, 4, 3), None),
    "T200-chunks": ((1, 200, 6), (1, 200, 6), (1, 6)),
    "T2-no-state-dims": ((3, 2), (3, 2), (3,)),
}


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=list(SHAPES))
def test_reference_matches_naive(shapes: tuple[Any, ...], agree: Any) -> None:
    a_shape, b_shape, h0_shape = shapes
    args = [log_decay(*a_shape, seed=0), randn(*b_shape, seed=1)]
    if h0_shape is not None:
        args.append(randn(*h0_shape, seed=2))
    agree(log_scan_reference, log_scan_naive, *args, atol=TOL, rtol=TOL)
    torch.testing.assert_close(ops.log_scan(*args), log_scan_reference(*args), atol=0, rtol=0)


def test_matches_linear_space_recurrence() -> None:
    # exp(log h_t) must be h_t = a_t h_{t-1} + b_t computed directly in linear space (fp64; the scan runs in fp32).
    log_a, log_b, log_h0 = log_decay(2, 150, 4, seed=3).double(), randn(2, 150, 4, seed=4).double(), randn(2, 4, seed=5)
    a, b, h = log_a.exp(), log_b.exp(), log_h0.double().exp()
    want = []
    for t in range(150):
        h = a[:, t] * h + b[:, t]
        want.append(h)
    got = log_scan_reference(log_a, log_b, log_h0.double()).exp()
    torch.testing.assert_close(got, torch.stack(want, 1), rtol=1e-4, atol=0)


def test_final_state_continues_the_scan() -> None:
    # Scanning [0, T) equals scanning [0, s) and then [s, T) from the state at s - 1 (what decoding relies on).
    log_a, log_b = log_decay(2, 90, 5, seed=6), randn(2, 90, 5, seed=7)
    whole = log_scan_reference(log_a, log_b)
    head = log_scan_reference(log_a[:, :40], log_b[:, :40])
    tail = log_scan_reference(log_a[:, 40:], log_b[:, 40:], head[:, -1])
    torch.testing.assert_close(torch.cat([head, tail], 1), whole, atol=TOL, rtol=TOL)


def test_long_sequence_strong_decay_stays_accurate() -> None:
    # a* reaches -5 * 4000 = -20000: one logcumsumexp over T would lose fp32 precision (~1e-3); chunks bound |a*| by
    # 5 * CHUNK, so the error stays near that times fp32's epsilon.
    T = 4000
    log_a = torch.full((1, T, 2), -5.0)
    log_b = randn(1, T, 2, seed=8)
    got = log_scan_reference(log_a, log_b)
    assert T > 2 * CHUNK and torch.isfinite(got).all()
    want = log_scan_naive(log_a.double(), log_b.double())
    torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=0)


def test_bf16_inputs_compute_in_fp32() -> None:
    log_a, log_b = log_decay(2, 33, 4, seed=9), randn(2, 33, 4, seed=10)
    got = log_scan_reference(log_a.bfloat16(), log_b.bfloat16())
    assert got.dtype == torch.bfloat16
    want = log_scan_naive(log_a.bfloat16().float(), log_b.bfloat16().float())
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.02)


def test_mutation_is_detectably_wrong() -> None:
    log_a, log_b = log_decay(1, 10, 3, seed=11), randn(1, 10, 3, seed=12)
    assert (no_decay_log_scan(log_a, log_b) - log_scan_reference(log_a, log_b)).abs().max() > 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.zeros(2, 3), torch.zeros(2)), r"log_b must be \[B, T, \.\.\.\]"),
        ((torch.zeros(2, 4, 3), torch.zeros(2, 5, 3)), r"log_a must be \[B, T, \.\.\.\] with T=5"),
        ((torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), torch.zeros(3, 3)), r"log_initial must be \[B, \.\.\.\]"),
    ],
)
def test_bad_arguments_raise(args: tuple[torch.Tensor, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ops.log_scan(*args)


def test_integer_input_raises_type_error() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        ops.log_scan(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2))
