"""Shared checks for the op tests: compare two implementations on outputs and on gradients."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

Outputs = tuple[torch.Tensor, list[torch.Tensor | None]]

# The first torch.testing.assert_close of a process imports torch.distributed.tensor (~2 s); pay that at collection
# so that it is not billed to whichever test happens to run first.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))


def run_with_grads(fn: Callable[..., torch.Tensor], args: Sequence[Any], kwargs: dict[str, Any], seed: int) -> Outputs:
    """Call ``fn`` on fresh leaf copies of ``args`` and backpropagate a seeded Gaussian cotangent.

    Returns the output and the gradient of every floating positional tensor argument (None elsewhere).
    """
    leaves = [
        a.detach().clone().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a for a in args
    ]
    out = fn(*leaves, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    cotangent = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(out.dtype)
    wrt = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = iter(torch.autograd.grad(out, wrt, cotangent, allow_unused=True))
    return out.detach(), [next(grads) if isinstance(a, torch.Tensor) and a.requires_grad else None for a in leaves]


def assert_agree(
    fn: Callable[..., torch.Tensor],
    oracle: Callable[..., torch.Tensor],
    *args: Any,
    atol: float,
    rtol: float = 0.0,
    seed: int = 0,
    **kwargs: Any,
) -> torch.Tensor:
    """Assert ``fn`` and ``oracle`` agree on the output and on every input gradient; returns ``fn``'s output."""
    out, grads = run_with_grads(fn, args, kwargs, seed)
    want, want_grads = run_with_grads(oracle, args, kwargs, seed)
    assert out.dtype == want.dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, want, atol=atol, rtol=rtol)
    for i, (g, w) in enumerate(zip(grads, want_grads, strict=True)):
        if g is None or w is None:
            # An input one side ignores must get no gradient on the other side either.
            assert g is None or not g.any(), f"gradient of argument {i}: only fn has one"
            assert w is None or not w.any(), f"gradient of argument {i}: only the oracle has one"
            continue
        assert torch.isfinite(g).all(), f"gradient of argument {i} is not finite"
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, i=i: f"gradient of argument {i}: {m}")
    return out


@pytest.fixture
def agree() -> Callable[..., torch.Tensor]:
    """:func:`assert_agree`, as a fixture (test files cannot import each other under importlib mode)."""
    return assert_agree


def rel_l2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Relative L2 error ``|x - y| / |y|`` in fp32 (the bf16 tolerance of the contract is 2e-2)."""
    x, y = x.detach().float(), y.detach().float()
    return float((x - y).norm() / y.norm().clamp_min(1e-12))


@pytest.fixture
def relative_l2() -> Callable[[torch.Tensor, torch.Tensor], float]:
    """:func:`rel_l2`, as a fixture."""
    return rel_l2
