"""edifice.ops.ssd (Mamba-2): the chunked reference vs the step loop and vs the semiseparable matrix (§3)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.ssd import segsum, ssd_naive, ssd_reference

TOL = 1e-4  # chunked sums and the step loop round differently in fp32


def make(
    batch: int, T: int, H: int, P: int, G: int, N: int, *, seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random SSD arguments: positive steps, negative decays (as softplus(dt) and -exp(A_log) give), skip, state."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    return {
        "x": randn(batch, T, H, P),
        "dt": (torch.rand(batch, T, H, generator=gen, dtype=torch.float64) * 0.9 + 0.05).to(dtype),
        "A": (-torch.rand(H, generator=gen, dtype=torch.float64) * 3 - 0.1).to(dtype),
        "B": randn(batch, T, G, N),
        "C": randn(batch, T, G, N),
        "D": randn(H),
        "h0": randn(batch, H, P, N),
    }


def outputs(fn: Any, chunk_size: int) -> Any:
    """``fn`` as a function of its seven tensors, returning y (positional, so every one gets a gradient)."""
    return lambda x, dt, A, B, C, D, h0: fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0)


def final_state(fn: Any, chunk_size: int) -> Any:
    """``fn`` as a function of its seven tensors, returning the final state."""
    return lambda x, dt, A, B, C, D, h0: fn(
        x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0, return_final_state=True
    )[1]


# name: (batch, T, H, P, G, N, chunk_size)
SHAPES = {
    "T1": (2, 1, 2, 3, 1, 4, 4),
    "T7-odd-chunks": (2, 7, 4, 5, 2, 3, 3),
    "T63-P60": (1, 63, 2, 60, 1, 8, 16),
    "T16-one-chunk": (2, 16, 3, 4, 3, 2, 16),
    "T9-chunk-1": (1, 9, 2, 2, 1, 3, 1),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_reference_matches_naive_on_outputs_gradients_and_final_state(shape: tuple[int, ...], agree: Any) -> None:
    *dims, L = shape
    args = list(make(*dims, seed=sum(shape)).values())
    agree(outputs(ssd_reference, L), outputs(ssd_naive, L), *args, atol=TOL, rtol=TOL)
    agree(final_state(ssd_reference, L), final_state(ssd_naive, L), *args, atol=TOL, rtol=TOL, seed=1)


def test_matches_the_semiseparable_matrix_form() -> None:
    # y_t = sum_{s<=t} C_t . B_s exp(sum_{s<r<=t} dt_r A) dt_s x_s + D x_t, written out in fp64 (Dao & Gu §3).
    a = make(2, 11, 4, 3, 2, 5, seed=3, dtype=torch.float64)
    x, dt, A, B, C, D = a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"]
    Bh, Ch = B.repeat_interleave(2, dim=2), C.repeat_interleave(2, dim=2)  # heads 0,1 -> group 0; 2,3 -> group 1
    want = torch.zeros_like(x)
    for t in range(11):
        for s in range(t + 1):
            decay = torch.exp((dt[:, s + 1 : t + 1] * A).sum(1))  # (B, H)
            weight = (Ch[:, t] * Bh[:, s]).sum(-1) * decay * dt[:, s]  # (B, H)
            want[:, t] += weight[..., None] * x[:, s]
    want += D[:, None] * x
    got = ssd_reference(x, dt, A, B, C, chunk_size=4, D=D)
    # fp64 throughout except the inter-chunk scan, which linear_recurrence runs in fp32.
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_segsum_is_the_decay_exponent_between_positions() -> None:
    a = torch.randn(2, 6, dtype=torch.float64)
    out = segsum(a)
    for i in range(6):
        for j in range(6):
            want = a[:, j + 1 : i + 1].sum(-1) if i >= j else torch.full((2,), float("-inf"), dtype=torch.float64)
            torch.testing.assert_close(out[:, i, j], want)


def test_chunk_size_does_not_change_the_result() -> None:
    a = make(2, 21, 2, 4, 1, 3, seed=5)
    args = (a["x"], a["dt"], a["A"], a["B"], a["C"])
    want = ssd_naive(*args, D=a["D"], initial_state=a["h0"])
    for L in (1, 2, 5, 8, 21, 64):
        got = ssd_reference(*args, chunk_size=L, D=a["D"], initial_state=a["h0"])
        torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


def test_final_state_continues_the_sequence() -> None:
    """Running [0, t) then [t, T) from the returned state equals one run: the state is all that carries over."""
    a = make(2, 19, 2, 3, 2, 4, seed=6)
    args = (a["x"], a["dt"], a["A"], a["B"], a["C"])
    full, h_end = ssd_reference(*args, chunk_size=4, D=a["D"], return_final_state=True)
    head, h_mid = ssd_reference(*(t[:, :7] for t in args[:2]), a["A"], *(t[:, :7] for t in args[3:]), chunk_size=4,
                                D=a["D"], return_final_state=True)  # fmt: skip
    tail, h_last = ssd_reference(*(t[:, 7:] for t in args[:2]), a["A"], *(t[:, 7:] for t in args[3:]), chunk_size=4,
                                 D=a["D"], initial_state=h_mid, return_final_state=True)  # fmt: skip
    torch.testing.assert_close(torch.cat([head, tail], 1), full, atol=TOL, rtol=TOL)
    torch.testing.assert_close(h_last, h_end, atol=TOL, rtol=TOL)


def test_zero_step_keeps_the_state_and_reads_it() -> None:
    """dt = 0 is an identity step: no decay and no input, so y = C . h0 (+ D x) and the state is unchanged."""
    a = make(1, 5, 2, 3, 1, 4, seed=7)
    dt = torch.zeros_like(a["dt"])
    y, h = ssd_reference(a["x"], dt, a["A"], a["B"], a["C"], chunk_size=2, initial_state=a["h0"],
                         return_final_state=True)  # fmt: skip
    torch.testing.assert_close(h, a["h0"])
    want = torch.einsum("bhpn,btn->bthp", a["h0"], a["C"][:, :, 0])
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_op_dispatches_to_the_reference_and_keeps_dtypes(relative_l2: Any) -> None:
    a = make(2, 10, 2, 4, 1, 3, seed=8)
    args = (a["x"], a["dt"], a["A"], a["B"], a["C"])
    want, want_h = ssd_reference(*args, chunk_size=4, D=a["D"], return_final_state=True)
    got = ops.ssd(*args, chunk_size=4, D=a["D"], return_final_state=True)
    assert isinstance(got, tuple)
    torch.testing.assert_close(got[0], want, atol=0, rtol=0)
    half_y, half_h = ops.ssd(*(t.bfloat16() for t in args), chunk_size=4, D=a["D"], return_final_state=True)
    assert half_y.dtype == torch.bfloat16
    assert half_h.dtype == torch.float32  # states stay fp32
    assert relative_l2(half_y, want) <= 2e-2
    assert relative_l2(half_h, want_h) <= 2e-2


def test_skip_per_channel() -> None:
    a = make(1, 6, 2, 3, 1, 2, seed=9)
    args = (a["x"], a["dt"], a["A"], a["B"], a["C"])
    D = torch.randn(2, 3, generator=torch.Generator().manual_seed(10))
    got = ssd_reference(*args, chunk_size=4, D=D) - ssd_reference(*args, chunk_size=4)
    torch.testing.assert_close(got, a["x"] * D, atol=1e-5, rtol=1e-5)


def _bad(**changes: Any) -> dict[str, Any]:
    a = make(2, 5, 4, 3, 2, 6, seed=0)
    kwargs: dict[str, Any] = {"x": a["x"], "dt": a["dt"], "A": a["A"], "B": a["B"], "C": a["C"]}
    kwargs.update(changes)
    return kwargs


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (_bad(x=torch.zeros(2, 5, 12)), ValueError, r"x must be \[B, T, H, P\] \(4-D\)"),
        (_bad(dt=torch.zeros(2, 5, 3)), ValueError, r"dt must be \[B, T, H\] = \[2, 5, 4\]"),
        (_bad(A=torch.zeros(3)), ValueError, r"A must be \[H\] = \[4\]"),
        (_bad(B=torch.zeros(2, 5, 3, 6), C=torch.zeros(2, 5, 3, 6)), ValueError, r"G dividing H=4"),
        (_bad(C=torch.zeros(2, 5, 2, 5)), ValueError, r"C must have B's shape \[2, 5, 2, 6\]"),
        (_bad(D=torch.zeros(5)), ValueError, r"D must be \[H\] = \[4\] or \[H, P\] = \[4, 3\]"),
        (_bad(initial_state=torch.zeros(2, 4, 3)), ValueError, r"initial_state must be \[B, H, P, N\]"),
        (_bad(chunk_size=0), ValueError, r"chunk_size must be a positive int"),
        (_bad(x=torch.zeros(2, 5, 4, 3, dtype=torch.long)), TypeError, r"x must be a floating-point"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ops.ssd(**kwargs)


def test_the_ready_made_mutation_forgets_nothing() -> None:
    """``ssd_without_decay`` (used by ``--edifice-mutate ssd``) is the SSD with A = 0: a running sum of dt x B^T."""
    from edifice.testing.mutate import MUTATIONS, ssd_without_decay

    assert MUTATIONS["ssd"] is ssd_without_decay
    a = make(1, 6, 2, 3, 1, 2, seed=11)
    y = ssd_without_decay(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=4)
    states = torch.einsum("bth,bthp,btn->bthpn", a["dt"], a["x"], a["B"][:, :, 0]).cumsum(1)  # (B, T, H, P, N)
    torch.testing.assert_close(y, torch.einsum("bthpn,btn->bthp", states, a["C"][:, :, 0]), atol=1e-5, rtol=1e-5)
