"""edifice.ops.damped_ema: convolution form vs the step-by-step recurrence (real and complex), carried state, chunked
calls, gradients, dtypes, the mutation and bad arguments."""

from __future__ import annotations

import pytest
import torch

from edifice import ops
from edifice.ops.damped_ema import damped_ema_naive, damped_ema_reference
from edifice.testing.mutate import undamped_ema

TOL = 1e-5


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def params(
    D: int, N: int, *, complex_: bool, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor | None]:
    g = gen(seed)
    alpha = torch.rand(D, N, generator=g, dtype=dtype) * 0.9 + 0.05
    delta = torch.rand(D, N, generator=g, dtype=dtype) * 0.9 + 0.05
    beta = torch.randn(D, N, generator=g, dtype=dtype)
    eta = torch.randn(D, N, generator=g, dtype=dtype)
    theta = None
    if complex_:
        eta = torch.complex(eta, torch.randn(D, N, generator=g, dtype=dtype))
        theta = torch.rand(D, N, generator=g, dtype=dtype) * 3.0
    return {"alpha": alpha, "delta": delta, "eta": eta, "beta": None if complex_ else beta, "theta": theta}


def call(fn, x, p, **kw):  # type: ignore[no-untyped-def]
    return fn(x, p["alpha"], p["delta"], p["eta"], beta=p["beta"], theta=p["theta"], **kw)


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize(("T", "D", "N"), [(1, 3, 2), (9, 4, 3), (63, 2, 16)])
def test_reference_matches_the_recurrence_fp64(complex_: bool, T: int, D: int, N: int) -> None:
    p = params(D, N, complex_=complex_, dtype=torch.float64)
    x = torch.randn(2, T, D, generator=gen(1), dtype=torch.float64)
    y, h = call(damped_ema_reference, x, p)
    y_naive, h_naive = call(damped_ema_naive, x, p)
    torch.testing.assert_close(y, y_naive, atol=1e-11, rtol=1e-11)
    torch.testing.assert_close(h, h_naive, atol=1e-11, rtol=1e-11)
    assert h.is_complex() == complex_ and y.dtype == torch.float64


@pytest.mark.parametrize("complex_", [False, True])
def test_chunked_calls_carry_the_state(complex_: bool) -> None:
    # One call over the whole sequence equals a prefill followed by single steps from the carried state.
    p = params(3, 4, complex_=complex_, seed=2)
    x = torch.randn(2, 10, 3, generator=gen(3))
    y, h = call(ops.damped_ema, x, p)
    pieces, state = [], None
    for start, length in ((0, 4), (4, 1), (5, 2), (7, 3)):
        out, state = call(ops.damped_ema, x[:, start : start + length], p, initial_state=state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, 1), y, atol=TOL, rtol=TOL)
    torch.testing.assert_close(state, h, atol=TOL, rtol=TOL)


def test_gradients_match_the_recurrence() -> None:
    p = params(3, 2, complex_=True, seed=4, dtype=torch.float64)
    x = torch.randn(2, 7, 3, generator=gen(5), dtype=torch.float64)
    h0 = torch.randn(2, 3, 2, generator=gen(6), dtype=torch.complex128)
    grads = []
    for fn in (damped_ema_reference, damped_ema_naive):
        leaves = {k: v.clone().requires_grad_(True) for k, v in p.items() if v is not None}
        xl = x.clone().requires_grad_(True)
        y, h = fn(xl, leaves["alpha"], leaves["delta"], leaves["eta"], theta=leaves["theta"], initial_state=h0)
        (y.sin().sum() + h.abs().sum()).backward()
        grads.append([xl.grad, *(v.grad for v in leaves.values())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_impulse_response_is_the_papers_kernel() -> None:
    # Mega eq. (4): K_j = Σ_n η α β (1 - α δ)^j, written out for one channel.
    p = params(1, 3, complex_=False, seed=7, dtype=torch.float64)
    x = torch.zeros(1, 6, 1, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    y, _ = call(ops.damped_ema, x, p)
    a, d, b, e = (p[k][0] for k in ("alpha", "delta", "beta", "eta"))  # type: ignore[index]
    want = torch.stack([(e * a * b * (1 - a * d) ** j).sum() for j in range(6)])
    torch.testing.assert_close(y[0, :, 0], want, atol=1e-12, rtol=1e-12)


def test_the_mutation_forgets_nothing() -> None:
    p = params(2, 2, complex_=False, seed=8)
    x = torch.randn(1, 12, 2, generator=gen(9))
    y, _ = call(ops.damped_ema, x, p)
    wrong, _ = undamped_ema(x, p["alpha"], p["delta"], p["eta"], beta=p["beta"])
    assert (wrong - y).abs().max() > 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    p = params(3, 2, complex_=True, seed=10)
    x = torch.randn(2, 5, 3, generator=gen(11)).to(dtype)
    y, h = call(ops.damped_ema, x, p)
    assert y.dtype == dtype and h.dtype == (torch.complex128 if dtype == torch.float64 else torch.complex64)
    want, _ = call(
        damped_ema_naive,
        x.double(),
        {k: None if v is None else v.to(torch.complex128 if v.is_complex() else torch.float64) for k, v in p.items()},
    )
    tol = 1e-6 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(y.double(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"x": torch.zeros(2, 5)}, ValueError, r"x must be \[B, T, D\]"),
        ({"delta": torch.zeros(3, 3)}, ValueError, r"delta must be \[D, N\] = \[3, 2\]"),
        ({"initial_state": torch.zeros(2, 3, 3)}, ValueError, r"initial_state must be \[B, D, N\] = \[2, 3, 2\]"),
        ({"initial_state": torch.zeros(2, 3, 2, dtype=torch.complex64)}, TypeError, "must be real"),
        ({"x": torch.zeros(2, 5, 3, dtype=torch.long)}, TypeError, "floating-point"),
    ],
)
def test_bad_arguments(kwargs: dict[str, torch.Tensor], error: type[Exception], message: str) -> None:
    args = {"x": torch.zeros(2, 5, 3), "alpha": torch.full((3, 2), 0.5), "delta": torch.full((3, 2), 0.5)}
    args |= {"eta": torch.ones(3, 2), **kwargs}
    with pytest.raises(error, match=message):
        ops.damped_ema(args.pop("x"), args.pop("alpha"), args.pop("delta"), args.pop("eta"), **args)
