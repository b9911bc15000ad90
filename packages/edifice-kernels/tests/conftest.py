"""Kernel tests run the same files on the CPU (Triton's interpreter) and on the GPU machine (compiled kernels).

Without CUDA, ``TRITON_INTERPRET=1`` is set here, before anything imports Triton, so the kernels run on CPU tensors
through numpy; tiny shapes keep that fast. Fixtures shared by the test files (which cannot import each other under
importlib mode) live here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from edifice.testing.tol import relative_l2

#: Largest relative L2 error of a kernel against the reference on the same inputs, per input dtype: fp32 differs
#: only by summation order; bf16 by where the fp32 results are rounded (both compute in fp32).
REL_L2 = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _assert_matches(got: Any, want: Any, dtype: torch.dtype, name: str) -> None:
    if want is None or got is None:
        assert got is None and want is None, f"{name}: one side has no gradient"
        return
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert torch.isfinite(got).all(), f"{name}: not finite (unwritten memory?)"
    err = relative_l2(got, want)
    assert err <= REL_L2[dtype], f"{name}: relative L2 error {err:.3g} > {REL_L2[dtype]:g} ({dtype})"


@pytest.fixture
def assert_matches() -> Callable[[Any, Any, torch.dtype, str], None]:
    """``assert_matches(got, want, dtype, name)``: same shape and dtype, finite, within :data:`REL_L2`."""
    return _assert_matches


def _compare(
    kernel: Callable[..., Any],
    reference: Callable[..., Any],
    inputs: dict[str, torch.Tensor | None],
    dtype: torch.dtype,
    **options: Any,
) -> None:
    """Run both on the same leaves; compare every output (a tuple's too) and the gradient of every input."""
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items() if v is not None and v.is_floating_point()}
    args = {k: leaves.get(k, v) for k, v in inputs.items()}
    got = kernel(**args, **options)
    want = reference(**args, **options)
    got_t = got if isinstance(got, tuple) else (got,)
    want_t = want if isinstance(want, tuple) else (want,)
    gen = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(w.shape, generator=gen).to(w.device) for w in want_t]
    for i, (g, w) in enumerate(zip(got_t, want_t, strict=True)):
        _assert_matches(g, w, dtype, f"output {i}")
    loss_got = sum((g.float() * c).sum() for g, c in zip(got_t, cotangents, strict=True))
    loss_want = sum((w.float() * c).sum() for w, c in zip(want_t, cotangents, strict=True))
    names = list(leaves)
    grads_got = torch.autograd.grad(loss_got, [leaves[k] for k in names], allow_unused=True)
    grads_want = torch.autograd.grad(loss_want, [leaves[k] for k in names], allow_unused=True)
    for name, g, w in zip(names, grads_got, grads_want, strict=True):
        _assert_matches(g, w, dtype, f"d{name}")


@pytest.fixture
def compare_with_reference() -> Callable[..., None]:
    """``compare_with_reference(kernel, reference, inputs, dtype, **options)``: outputs and all input gradients."""
    return _compare


@pytest.fixture
def nan_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.empty``/``empty_like`` return NaN-filled floating tensors, so memory a kernel leaves unwritten shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_fill(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan_fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_fill(empty_like(*a, **k)))


def _after_in_place(fn: Callable[..., Any], inputs: dict[str, Any], target: str, **options: Any) -> tuple[Any, ...]:
    """Gradients of every floating input after modifying ``target`` (an input's name, or ``"out<i>"``) in place
    between the call and the backward, as callers do with the states they carry."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    args = {k: leaves[k] * 1 if k in leaves else v for k, v in inputs.items()}  # non-leaves: modifiable in place
    out = fn(**args, **options)
    outs = out if isinstance(out, tuple) else (out,)
    with torch.no_grad():
        (outs[int(target[3:])] if target.startswith("out") else args[target]).mul_(1.0)
    gen = torch.Generator().manual_seed(7)
    loss = sum((o.float() * torch.randn(o.shape, generator=gen).to(o.device)).sum() for o in outs if o.requires_grad)
    return torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)


@pytest.fixture
def assert_in_place_allowed() -> Callable[..., None]:
    """``assert_in_place_allowed(kernel, reference, inputs, targets, dtype, **options)``: for each target the
    reference lets a caller modify in place after the call, so does the kernel, with the same gradients."""

    def check(
        kernel: Callable[..., Any],
        reference: Callable[..., Any],
        inputs: dict[str, Any],
        targets: list[str],
        dtype: torch.dtype,
        **options: Any,
    ) -> None:
        for target in targets:
            want = _after_in_place(reference, inputs, target, **options)  # raises if the reference forbids it
            got = _after_in_place(kernel, inputs, target, **options)
            for i, (g, w) in enumerate(zip(got, want, strict=True)):
                _assert_matches(g, w, dtype, f"gradient {i} after modifying {target} in place")

    return check
