"""edifice.ops.mimo_ssd (Mamba-3 MIMO): the chunked reference vs the step loop, the matrix form, and Mamba-2's SSD."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.mimo_ssd import mimo_ssd_naive, mimo_ssd_reference
from edifice.ops.ssd import ssd_reference

TOL = 1e-4  # chunked sums and the step loop round differently in fp32


def make(
    batch: int,
    T: int,
    R: int,
    S: int,
    H: int,
    P: int,
    G: int,
    N: int,
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random MIMO SSD arguments: R inputs and S outputs per head, negative log decays, an initial state."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    return {
        "x": randn(batch, T, R, H, P),
        "log_a": (-torch.rand(batch, T, H, generator=gen, dtype=torch.float64) * 1.5).to(dtype),
        "B": randn(batch, T, R, G, N),
        "C": randn(batch, T, S, G, N),
        "h0": randn(batch, H, P, N),
    }


def outputs(fn: Any, chunk_size: int) -> Any:
    """``fn`` as a function of its five tensors, returning y (positional, so every one gets a gradient)."""
    return lambda x, log_a, B, C, h0: fn(x, log_a, B, C, chunk_size=chunk_size, initial_state=h0)


def final_state(fn: Any, chunk_size: int) -> Any:
    """``fn`` as a function of its five tensors, returning the final state."""
    return lambda x, log_a, B, C, h0: fn(
        x, log_a, B, C, chunk_size=chunk_size, initial_state=h0, return_final_state=True
    )[1]


# name: (batch, T, R, S, H, P, G, N, chunk_size)
SHAPES = {
    "T1": (2, 1, 2, 1, 2, 3, 1, 4, 4),
    "T7-odd-chunks-R3-S2": (2, 7, 3, 2, 4, 5, 2, 3, 3),
    "T63-P60-R2": (1, 63, 2, 1, 2, 60, 1, 8, 16),
    "T16-one-chunk-R1": (2, 16, 1, 1, 3, 4, 3, 2, 16),
    "T9-chunk-1-R4-S4": (1, 9, 4, 4, 2, 2, 1, 3, 1),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_reference_matches_naive_on_outputs_gradients_and_final_state(shape: tuple[int, ...], agree: Any) -> None:
    *dims, L = shape
    args = list(make(*dims, seed=sum(shape)).values())
    agree(outputs(mimo_ssd_reference, L), outputs(mimo_ssd_naive, L), *args, atol=TOL, rtol=TOL)
    agree(final_state(mimo_ssd_reference, L), final_state(mimo_ssd_naive, L), *args, atol=TOL, rtol=TOL, seed=1)


def test_matches_the_block_semiseparable_matrix_form() -> None:
    # y_{t,s} = sum_{u<=t} sum_r C_{t,s} . B_{u,r} exp(sum_{u<q<=t} log_a_q) x_{u,r}, written out in fp64.
    a = make(2, 9, 3, 2, 4, 3, 2, 5, seed=3, dtype=torch.float64)
    x, log_a, B, C = a["x"], a["log_a"], a["B"], a["C"]
    Bh, Ch = B.repeat_interleave(2, dim=3), C.repeat_interleave(2, dim=3)  # heads 0,1 -> group 0; 2,3 -> group 1
    want = torch.zeros(2, 9, 2, 4, 3, dtype=torch.float64)
    for t in range(9):
        for u in range(t + 1):
            decay = torch.exp(log_a[:, u + 1 : t + 1].sum(1))  # (B, H)
            for s in range(2):
                for r in range(3):
                    weight = (Ch[:, t, s] * Bh[:, u, r]).sum(-1) * decay  # (B, H)
                    want[:, t, s] += weight[..., None] * x[:, u, r]
    got = mimo_ssd_reference(x, log_a, B, C, chunk_size=4)
    # fp64 throughout except the inter-chunk scan, which linear_recurrence runs in fp32.
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_rank_one_is_mamba2_ssd() -> None:
    """R = S = 1 with x = dt x and log_a = dt A is Mamba-2's SSD (edifice.ops.ssd without the skip)."""
    gen = torch.Generator().manual_seed(4)
    x, B, C = (
        torch.randn(2, 13, 3, 4, generator=gen),
        torch.randn(2, 13, 1, 5, generator=gen),
        torch.randn(2, 13, 1, 5, generator=gen),
    )
    dt = torch.rand(2, 13, 3, generator=gen) + 0.05
    A = -torch.rand(3, generator=gen) - 0.2
    h0 = torch.randn(2, 3, 4, 5, generator=gen)
    want, want_h = ssd_reference(x, dt, A, B, C, chunk_size=4, initial_state=h0, return_final_state=True)
    got, got_h = mimo_ssd_reference(
        (x * dt[..., None]).unsqueeze(2), dt * A, B.unsqueeze(2), C.unsqueeze(2), chunk_size=5, initial_state=h0,
        return_final_state=True,
    )  # fmt: skip
    torch.testing.assert_close(got[:, :, 0], want, atol=TOL, rtol=TOL)
    torch.testing.assert_close(got_h, want_h, atol=TOL, rtol=TOL)


def test_two_writes_per_step_equal_the_sum_of_two_single_rank_runs() -> None:
    """The state is linear in its writes: rank 2 is the sum of two rank-1 runs under the same decay."""
    a = make(1, 11, 2, 1, 2, 3, 1, 4, seed=5)
    x, log_a, B, C = a["x"], a["log_a"], a["B"], a["C"]
    both = mimo_ssd_reference(x, log_a, B, C, chunk_size=3)
    parts = sum(mimo_ssd_reference(x[:, :, r : r + 1], log_a, B[:, :, r : r + 1], C, chunk_size=3) for r in range(2))
    torch.testing.assert_close(both, parts, atol=TOL, rtol=TOL)


def test_chunk_size_does_not_change_the_result() -> None:
    a = make(2, 21, 2, 2, 2, 4, 1, 3, seed=6)
    args = (a["x"], a["log_a"], a["B"], a["C"])
    want = mimo_ssd_naive(*args, initial_state=a["h0"])
    for L in (1, 2, 5, 8, 21, 64):
        got = mimo_ssd_reference(*args, chunk_size=L, initial_state=a["h0"])
        torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


def test_final_state_continues_the_sequence() -> None:
    """Running [0, t) then [t, T) from the returned state equals one run: the state is all that carries over."""
    a = make(2, 19, 2, 1, 2, 3, 2, 4, seed=7)
    x, log_a, B, C = a["x"], a["log_a"], a["B"], a["C"]
    full, h_end = mimo_ssd_reference(x, log_a, B, C, chunk_size=4, return_final_state=True)
    head, h_mid = mimo_ssd_reference(x[:, :7], log_a[:, :7], B[:, :7], C[:, :7], chunk_size=4, return_final_state=True)
    tail, h_last = mimo_ssd_reference(
        x[:, 7:], log_a[:, 7:], B[:, 7:], C[:, 7:], chunk_size=4, initial_state=h_mid, return_final_state=True
    )
    torch.testing.assert_close(torch.cat([head, tail], 1), full, atol=TOL, rtol=TOL)
    torch.testing.assert_close(h_last, h_end, atol=TOL, rtol=TOL)


def test_zero_decay_and_no_input_keep_the_state_and_read_it() -> None:
    """log_a = 0 and x = 0 is an identity step: the state is unchanged and each output reads it, y = h0 C."""
    a = make(1, 5, 2, 3, 2, 3, 1, 4, seed=8)
    y, h = mimo_ssd_reference(torch.zeros_like(a["x"]), torch.zeros_like(a["log_a"]), a["B"], a["C"], chunk_size=2,
                              initial_state=a["h0"], return_final_state=True)  # fmt: skip
    torch.testing.assert_close(h, a["h0"])
    want = torch.einsum("bhpn,btsn->btshp", a["h0"], a["C"][:, :, :, 0])
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_op_dispatches_to_the_reference_and_keeps_dtypes(relative_l2: Any) -> None:
    a = make(2, 10, 2, 1, 2, 4, 1, 3, seed=9)
    args = (a["x"], a["log_a"], a["B"], a["C"])
    want, want_h = mimo_ssd_reference(*args, chunk_size=4, return_final_state=True)
    got = ops.mimo_ssd(*args, chunk_size=4, return_final_state=True)
    assert isinstance(got, tuple)
    torch.testing.assert_close(got[0], want, atol=0, rtol=0)
    half_y, half_h = ops.mimo_ssd(*(t.bfloat16() for t in args), chunk_size=4, return_final_state=True)
    assert half_y.dtype == torch.bfloat16
    assert half_h.dtype == torch.float32  # states stay fp32
    assert relative_l2(half_y, want) <= 2e-2
    assert relative_l2(half_h, want_h) <= 2e-2


def _bad(**changes: Any) -> dict[str, Any]:
    a = make(2, 5, 2, 3, 4, 3, 2, 6, seed=0)
    kwargs: dict[str, Any] = {"x": a["x"], "log_a": a["log_a"], "B": a["B"], "C": a["C"]}
    kwargs.update(changes)
    return kwargs


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (_bad(x=torch.zeros(2, 5, 4, 3)), ValueError, r"x must be \[B, T, R, H, P\] \(5-D\)"),
        (_bad(log_a=torch.zeros(2, 5, 3)), ValueError, r"log_a must be \[B, T, H\] = \[2, 5, 4\]"),
        (_bad(B=torch.zeros(2, 5, 3, 2, 6)), ValueError, r"B must be \[B, T, R, G, N\] with B=2, T=5, R=2"),
        (_bad(B=torch.zeros(2, 5, 2, 3, 6), C=torch.zeros(2, 5, 3, 3, 6)), ValueError, r"G dividing H=4"),
        (_bad(C=torch.zeros(2, 5, 3, 2, 5)), ValueError, r"C must be \[B, T, S, G, N\] = \[2, 5, S, 2, 6\]"),
        (_bad(initial_state=torch.zeros(2, 4, 3)), ValueError, r"initial_state must be \[B, H, P, N\]"),
        (_bad(chunk_size=0), ValueError, r"chunk_size must be a positive int"),
        (_bad(x=torch.zeros(2, 5, 2, 4, 3, dtype=torch.long)), TypeError, r"x must be a floating-point"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ops.mimo_ssd(**kwargs)


def test_the_ready_made_mutation_forgets_nothing() -> None:
    """``mimo_ssd_without_decay`` (``--edifice-mutate mimo_ssd``) never decays: a running sum of X_t B_t^T."""
    from edifice.testing.mutate import MUTATIONS, mimo_ssd_without_decay

    assert MUTATIONS["mimo_ssd"] is mimo_ssd_without_decay
    a = make(1, 6, 2, 1, 2, 3, 1, 2, seed=11)
    y = mimo_ssd_without_decay(a["x"], a["log_a"], a["B"], a["C"], chunk_size=4)
    states = torch.einsum("btrhp,btrn->bthpn", a["x"], a["B"][:, :, :, 0]).cumsum(1)  # (B, T, H, P, N)
    want = torch.einsum("bthpn,btsn->btshp", states, a["C"][:, :, :, 0])
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
