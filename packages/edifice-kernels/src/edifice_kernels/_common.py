# mypy: allow-untyped-defs, allow-incomplete-defs, allow-untyped-decorators, allow-untyped-calls
# (Triton kernels are untyped: @triton.jit functions take tensors of pointers and constexprs.)
"""What every kernel module shares: launch sizes, the probe pattern, and the small Triton helpers.

Kernels compute in fp32 whatever their inputs' dtype (loads are upcast, stores cast back), keep recurrent states in
registers, and take contiguous tensors (wrappers call ``.contiguous()``, a no-op for the usual layouts).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["assert_probe_close", "cuda_probe", "eligible", "next_pow2", "num_programs", "softplus", "softplus_grad"]


def eligible(first: Any, *others: Any) -> bool:
    """The predicates' common part: ``first`` a CUDA tensor, the other tensors (None allowed) on its device, and not
    inside a ``torch.compile`` trace -- there the reference runs and Inductor fuses it (the kernels are not yet
    registered as ``torch.library`` custom ops that Dynamo could trace through)."""
    if not isinstance(first, torch.Tensor) or first.device.type != "cuda" or torch.compiler.is_compiling():
        return False
    return all(t is None or (isinstance(t, torch.Tensor) and t.device == first.device) for t in others)


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (Triton blocks have power-of-two sizes)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_programs(device: torch.device, per_sm: int = 4) -> int:
    """How many persistent programs fill ``device``: ``per_sm`` per SM on CUDA, a few under the CPU interpreter."""
    if device.type != "cuda":
        return 4
    return per_sm * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def cuda_probe(check: Callable[[torch.device], None]) -> bool:
    """An override's availability probe: False without CUDA; else runs ``check`` (a tiny compile-and-compare call
    on the current CUDA device) and returns True. Whatever ``check`` raises propagates, so dispatch records the
    override as failed, warns once and falls back to the reference."""
    if not torch.cuda.is_available():
        return False
    # The first call that could use a kernel runs its probe, and that call may be decoding under no_grad (or
    # inference_mode): the probe's backward check needs autograd whatever the caller's mode.
    with torch.inference_mode(False), torch.enable_grad():
        check(torch.device("cuda", torch.cuda.current_device()))
    torch.cuda.synchronize()
    return True


def assert_probe_close(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = 1e-4) -> None:
    """Raise ``RuntimeError`` when a probe's kernel result differs from the reference (a miscompile on this card)."""
    err = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item()
    if not err <= tol * (1.0 + scale):  # also catches NaN
        raise RuntimeError(f"{what}: the kernel differs from the reference by {err:.3g} on this device")


@triton.jit
def softplus(x):
    """``torch.nn.functional.softplus(x)`` (beta 1, threshold 20): ``log(1 + e^x)``, and ``x`` above 20."""
    e = tl.exp(tl.minimum(x, 20.0))
    # log(1 + e) rounds to 0 once e < 2^-24; e itself is the answer to fp32 precision there.
    return tl.where(x > 20.0, x, tl.where(x < -15.0, e, tl.log(1.0 + e)))


@triton.jit
def softplus_grad(x):
    """d softplus / dx: ``sigmoid(x)``, and 1 above the threshold 20 (as torch's softplus backward)."""
    return tl.where(x > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-x)))
