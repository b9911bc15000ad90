"""Entry point of edifice-attention: registers its architectures (imports nothing heavy)."""

from __future__ import annotations

from collections.abc import Callable

from edifice import hookimpl


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    """Register the attention and transformer architectures."""
