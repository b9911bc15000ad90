"""Entry point of edifice-kernels: registers the op overrides each kernel module lists (nothing imported eagerly).

Every override names its implementation, shape predicate and availability probe as import strings, so registering
costs no Triton import and no CUDA initialisation: core imports a kernel, and runs its probe, the first time a call
on a CUDA tensor could use it (DESIGN §6).
"""

from __future__ import annotations

from collections.abc import Callable

from edifice import hookimpl
from edifice_kernels.overrides import OVERRIDES


@hookimpl
def register_ops(register: Callable[..., None]) -> None:
    """Register every kernel as an override of its op (CUDA tensors only)."""
    for override in OVERRIDES:
        register(override)
