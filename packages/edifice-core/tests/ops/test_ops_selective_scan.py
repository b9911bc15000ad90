"""edifice.ops.selective_scan: the vectorised reference (three scan algorithms) vs the step loop, a closed form
written from the paper's equations, fp32 state under bf16 inputs, and argument checking."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from edifice import ops
from edifice.ops.selective_scan import SCAN_ALGORITHMS, selective_scan_naive, selective_scan_reference

TOL = 1e-4  # scans: fp32 summation order differs from the step loop


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_args(batch: int, T: int, D: int, N: int, *, groups: int = 0, seed: int = 0) -> list[Any]:
    """u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state in the op's layout."""
    bc = (batch, T, groups, N) if groups else (batch, T, N)
    A = -torch.rand(D, N, generator=torch.Generator().manual_seed(seed)) * 4 - 0.05  # negative: decays
    return [
        randn(batch, T, D, seed=seed + 1),
        randn(batch, T, D, seed=seed + 2),
        A,
        randn(*bc, seed=seed + 3),
        randn(*bc, seed=seed + 4),
        randn(D, seed=seed + 5),
        randn(batch, T, D, seed=seed + 6),
        randn(D, seed=seed + 7) * 0.5,
        True,
        randn(batch, D, N, seed=seed + 8),
    ]


def with_state(fn: Callable[..., Any], algorithm: str | None = None) -> Callable[..., torch.Tensor]:
    """``fn`` returning its output and final state as one flat tensor, so both are compared (and differentiated)."""

    def run(*args: Any) -> torch.Tensor:
        kwargs = {} if algorithm is None else {"algorithm": algorithm}
        y, h = fn(*args, return_final_state=True, **kwargs)
        return torch.cat([y.flatten(), h.flatten()])

    return run


# name: (batch, T, D, N, groups)
SHAPES = {
    "T1": (2, 1, 3, 2, 0),
    "T7": (2, 7, 5, 3, 0),
    "T63-D60": (1, 63, 60, 4, 0),
    "T40-groups": (2, 40, 6, 3, 2),
}


@pytest.mark.parametrize("algorithm", SCAN_ALGORITHMS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_reference_matches_naive(shape: tuple[int, ...], algorithm: str, agree: Any) -> None:
    batch, T, D, N, groups = shape
    args = make_args(batch, T, D, N, groups=groups)
    agree(with_state(selective_scan_reference, algorithm), with_state(selective_scan_naive), *args, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("algorithm", SCAN_ALGORITHMS)
def test_optional_arguments_and_plain_delta(algorithm: str, agree: Any) -> None:
    # No D, z, bias or initial state; delta already positive and used as Δ directly.
    u, delta, A, B, C, *_ = make_args(2, 9, 4, 3, seed=10)
    args = [u, delta.abs(), A, B, C, None, None, None, False, None]
    agree(with_state(selective_scan_reference, algorithm), with_state(selective_scan_naive), *args, atol=TOL, rtol=TOL)


def test_matches_closed_form_of_the_paper() -> None:
    # Unrolling eq. 2a from h_0: h_t = prod_{r<=t} Ā_r h_0 + sum_{s<=t} (prod_{s<r<=t} Ā_r) Δ_s B_s u_s, with
    # Ā_r = exp(Δ_r A) (eq. 4), so prod_{s<r<=t} Ā_r = exp(A sum_{s<r<=t} Δ_r); y_t = C_t h_t + D u_t, gated by SiLU(z).
    u, delta, A, B, C, D, z, bias, h0 = (a.double() for a in make_args(1, 6, 2, 3, seed=20) if a is not True)
    dt = F.softplus(delta + bias)[0]  # (T, D)
    T = u.shape[1]
    y = torch.zeros(T, 2, dtype=torch.float64)
    for t in range(T):
        h = torch.exp(A * dt[: t + 1].sum(0)[:, None]) * h0[0]  # (D, N)
        for s in range(t + 1):
            h = h + torch.exp(A * dt[s + 1 : t + 1].sum(0)[:, None]) * dt[s, :, None] * B[0, s] * u[0, s, :, None]
        y[t] = ((h * C[0, t]).sum(-1) + D * u[0, t]) * F.silu(z[0, t])
    got = ops.selective_scan(*(a.float() for a in (u, delta, A, B, C, D, z, bias)), True, h0.float())
    torch.testing.assert_close(got[0], y.float(), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("algorithm", SCAN_ALGORITHMS)
def test_bf16_inputs_keep_an_fp32_state(algorithm: str) -> None:
    args = make_args(2, 20, 8, 4, seed=30)
    low = [a.bfloat16() if isinstance(a, torch.Tensor) and a is not args[-1] else a for a in args]
    y, h = ops.selective_scan(*low, return_final_state=True, algorithm=algorithm)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    # The oracle on the same (rounded) values in fp32: only the output's final rounding differs.
    want, want_h = selective_scan_naive(*[a.float() if isinstance(a, torch.Tensor) else a for a in low], True)
    torch.testing.assert_close(h, want_h, atol=TOL, rtol=TOL)
    torch.testing.assert_close(y.float(), want, atol=0.02, rtol=0.02)


def test_chunked_prefixes_continue_from_the_final_state() -> None:
    args = make_args(2, 30, 5, 3, seed=40)
    u, delta, A, B, C, D, z, bias, sp, h0 = args
    full, h_full = ops.selective_scan(*args, return_final_state=True)
    y1, h1 = ops.selective_scan(u[:, :13], delta[:, :13], A, B[:, :13], C[:, :13], D, z[:, :13], bias, sp, h0, True)
    y2, h2 = ops.selective_scan(u[:, 13:], delta[:, 13:], A, B[:, 13:], C[:, 13:], D, z[:, 13:], bias, sp, h1, True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), full, atol=TOL, rtol=TOL)
    torch.testing.assert_close(h2, h_full, atol=TOL, rtol=TOL)


def _saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward while ``fn()`` runs."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("algorithm", SCAN_ALGORITHMS)
def test_time_blocks_match_one_block_and_keep_less_for_backward(
    algorithm: str, agree: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module("edifice.ops.selective_scan")  # the attribute of edifice.ops is the op

    args = make_args(2, 45, 6, 4, groups=2, seed=50)
    leaves = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    one_block = _saved_bytes(lambda: selective_scan_reference(*leaves, algorithm=algorithm))
    monkeypatch.setattr(module, "BLOCK_ELEMENTS", 2 * 6 * 4 * 8)  # blocks of 8 positions: 6 of them, the last of 5
    agree(with_state(selective_scan_reference, algorithm), with_state(selective_scan_naive), *args, atol=TOL, rtol=TOL)
    blocked = _saved_bytes(lambda: selective_scan_reference(*leaves, algorithm=algorithm))
    # Checkpointed blocks keep their inputs and the state between blocks, never the [B, T, D, N] intermediates.
    assert blocked < one_block / 4, (blocked, one_block)


def test_op_dispatches_to_the_reference() -> None:
    args = make_args(1, 5, 3, 2, seed=50)
    assert ops.selected("selective_scan", *args) == "reference"
    torch.testing.assert_close(ops.selective_scan(*args), selective_scan_reference(*args), atol=0, rtol=0)


BAD: dict[str, tuple[int, Callable[[torch.Tensor], torch.Tensor], str]] = {
    "u-rank": (0, lambda t: t[0], r"u .*\[B, T, D\]"),
    "delta-shape": (1, lambda t: t[:, :-1], r"delta must be \[B, T, D\]"),
    "A-channels": (2, lambda t: t[:-1], r"A must be \[D, N\] with D=4"),
    "B-state": (3, lambda t: t[..., :-1], r"B must be \[B, T, N\]"),
    "C-groups": (4, lambda t: t.unsqueeze(2).expand(-1, -1, 3, -1), r"C must be .*G dividing D=4"),
    "D-shape": (5, lambda t: t[:2], r"D must be \[D\] = \[4\]"),
    "initial-shape": (9, lambda t: t[..., :1], r"initial_state must be \[B, D, N\]"),
    "int-u": (0, lambda t: t.long(), r"u"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=list(BAD))
def test_bad_arguments_name_the_expected_layout(case: tuple[int, Any, str]) -> None:
    index, spoil, message = case
    args = make_args(2, 5, 4, 3, seed=60)
    args[index] = spoil(args[index])
    with pytest.raises((ValueError, TypeError), match=message):
        ops.selective_scan(*args)
    with pytest.raises(ValueError, match="algorithm"):
        ops.selective_scan(*make_args(1, 2, 4, 3), algorithm="blelloch")
