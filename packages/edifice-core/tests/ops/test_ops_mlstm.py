"""edifice.ops.mlstm: chunkwise-parallel vs the step loop, the unstabilised equations, skipped steps, stability."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.mlstm import mlstm_naive, mlstm_reference

TOL = 1e-4  # chunked sums and the step loop round differently in fp32


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def inputs(B: int, H: int, T: int, K: int, V: int, *, seed: int, gate_scale: float = 2.0) -> list[torch.Tensor]:
    """q, k, v and gate pre-activations; the gates spread over a few units so the stabiliser moves."""
    q, k, v = randn(B, H, T, K, seed=seed), randn(B, H, T, K, seed=seed + 1), randn(B, H, T, V, seed=seed + 2)
    i, f = randn(B, H, T, seed=seed + 3, scale=gate_scale), randn(B, H, T, seed=seed + 4, scale=gate_scale) + 2.0
    return [q, k, v, i, f]


def initial_state(B: int, H: int, K: int, V: int, *, seed: int) -> list[torch.Tensor]:
    return [randn(B, H, K, V, seed=seed), randn(B, H, K, seed=seed + 1), randn(B, H, seed=seed + 2)]


def flat(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., torch.Tensor]:
    """``fn``'s outputs and final state as one vector, so that outputs, state and all gradients are compared."""

    def run(q: Any, k: Any, v: Any, i: Any, f: Any, *state: torch.Tensor) -> torch.Tensor:
        h, (C, n, m) = fn(q, k, v, i, f, tuple(state) if state else None, **kwargs)
        return torch.cat([h.flatten(), C.flatten(), n.flatten(), m.flatten()])

    return run


# name: (B, H, T, K, V, chunk_size, with initial state)
SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "T1": (2, 2, 1, 4, 3, 64, True),
    "T7-one-chunk": (2, 3, 7, 5, 4, 64, False),
    "T7-chunks-of-3": (1, 2, 7, 4, 6, 3, True),
    "T63-chunks-of-16": (1, 2, 63, 8, 8, 16, True),
    "D60": (1, 1, 9, 60, 60, 4, False),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_chunked_matches_recurrent(shape: tuple[int, ...], agree: Any) -> None:
    B, H, T, K, V, L, with_initial = shape
    args = inputs(B, H, T, K, V, seed=T + K)
    if with_initial:
        args += initial_state(B, H, K, V, seed=7)
    agree(flat(mlstm_reference, chunk_size=L), flat(mlstm_naive), *args, atol=TOL, rtol=TOL)
    h, _ = ops.mlstm(*args[:5], tuple(args[5:]) or None, chunk_size=L)
    torch.testing.assert_close(h, mlstm_reference(*args[:5], tuple(args[5:]) or None, chunk_size=L)[0])


def test_matches_unstabilised_equations() -> None:
    # Eqs. 19-21 straight, in fp64 without the stabiliser (small gates: exp(ĩ) cannot overflow here).
    B, H, T, K, V = 2, 2, 11, 6, 5
    q, k, v, i, f = (x.double() for x in inputs(B, H, T, K, V, seed=3, gate_scale=1.0))
    C, n = torch.zeros(B, H, K, V, dtype=torch.float64), torch.zeros(B, H, K, dtype=torch.float64)
    want = []
    for t in range(T):
        i_t, f_t = torch.exp(i[:, :, t]), torch.sigmoid(f[:, :, t])
        kt = k[:, :, t] / K**0.5
        C = f_t[..., None, None] * C + i_t[..., None, None] * torch.einsum("bhk,bhv->bhkv", kt, v[:, :, t])
        n = f_t[..., None] * n + i_t[..., None] * kt
        num = torch.einsum("bhkv,bhk->bhv", C, q[:, :, t])
        den = torch.einsum("bhk,bhk->bh", n, q[:, :, t]).abs().clamp_min(1.0)
        want.append(num / den[..., None])
    h, (C_end, n_end, m_end) = mlstm_reference(*(x.float() for x in (q, k, v, i, f)), chunk_size=4, eps=0.0)
    torch.testing.assert_close(h.double(), torch.stack(want, 2), atol=TOL, rtol=TOL)
    # The stored state is the true one scaled by exp(-m), accumulated with raw keys (q carries the 1/sqrt(K)).
    scale = torch.exp(m_end.double()) / K**0.5
    torch.testing.assert_close(C_end.double() * scale[..., None, None], C, atol=TOL, rtol=TOL)
    torch.testing.assert_close(n_end.double() * scale[..., None], n, atol=TOL, rtol=TOL)


def test_skipped_steps_leave_state_untouched() -> None:
    # ĩ = -inf (no input) and f̃ = +inf (no decay) is how padding is skipped: the state passes through unchanged.
    # Steps 2-6 cover two whole chunks of 2, which then have no input at all.
    q, k, v, i, f = inputs(1, 2, 9, 4, 4, seed=5)
    i[:, :, 2:7], f[:, :, 2:7] = -torch.inf, torch.inf
    leaves = [x.requires_grad_() for x in (q, k, v, i, f)]
    h, (C, n, m) = mlstm_reference(*leaves, chunk_size=2)
    (h.sum() + C.sum()).backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in leaves)
    keep = [0, 1, 7, 8]
    h2, (C2, n2, m2) = mlstm_reference(*(x.detach()[:, :, keep] for x in leaves), chunk_size=2)
    for got, want in ((h[:, :, keep], h2), (C, C2), (n, n2), (m, m2)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_split_sequence_resumes_from_state() -> None:
    args = inputs(2, 2, 13, 4, 3, seed=9)
    h, state = mlstm_reference(*args, chunk_size=4)
    h1, mid = mlstm_reference(*(x[:, :, :6] for x in args), chunk_size=4)
    h2, end = mlstm_reference(*(x[:, :, 6:] for x in args), mid, chunk_size=4)
    torch.testing.assert_close(torch.cat([h1, h2], 2), h, atol=TOL, rtol=TOL)
    for got, want in zip(end, state, strict=True):
        torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


def test_large_gates_do_not_overflow() -> None:
    # exp(100) overflows fp32; the stabiliser keeps every exponent <= 0.
    q, k, v, i, f = inputs(1, 2, 20, 4, 4, seed=11, gate_scale=100.0)
    leaves = [x.requires_grad_() for x in (q, k, v, i, f)]
    h, (C, n, m) = ops.mlstm(*leaves, chunk_size=8)
    assert all(torch.isfinite(x).all() for x in (h, C, n, m))
    h.sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in leaves)
    want, _ = mlstm_naive(*(x.detach().double() for x in leaves))
    torch.testing.assert_close(h.double(), want, atol=1e-3, rtol=1e-3)


def test_bfloat16_inputs(relative_l2: Any) -> None:
    args = [x.bfloat16() for x in inputs(2, 2, 17, 8, 8, seed=13)]
    want, _ = mlstm_naive(*(x.double() for x in args))
    h, (C, _, _) = ops.mlstm(*args, chunk_size=8)
    assert h.dtype == torch.bfloat16 and C.dtype == torch.float32
    assert relative_l2(h, want) <= 2e-2


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"q": torch.zeros(2, 3, 4)}, ValueError, r"q must be \[B, H, T, K\] \(4-D\)"),
        ({"k": torch.zeros(1, 2, 5, 3)}, ValueError, r"k must be \[B, H, T, K\] = \[1, 2, 5, 4\]"),
        ({"v": torch.zeros(1, 2, 4, 3)}, ValueError, r"v must be \[B, H, T, V\] with \[B, H, T\] = \[1, 2, 5\]"),
        ({"f": torch.zeros(1, 2, 4)}, ValueError, r"f must be \[B, H, T\] = \[1, 2, 5\]"),
        ({"i": torch.zeros(1, 2, 5, dtype=torch.long)}, TypeError, r"i must be a floating-point"),
        ({"initial": (torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, 1))}, ValueError, r"m \[B, H\]"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be > 0"),
    ],
)
def test_invalid_arguments_raise_clear_errors(change: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs: dict[str, Any] = dict(zip("qkvif", inputs(1, 2, 5, 4, 3, seed=0), strict=True))
    kwargs.update(change)
    with pytest.raises(error, match=match):
        ops.mlstm(**kwargs)
