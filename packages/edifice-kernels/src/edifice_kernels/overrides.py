"""The op overrides edifice-kernels provides, as :class:`edifice.spec.OpOverride` records (torch- and Triton-free)."""

from __future__ import annotations

from edifice.spec import OpOverride

__all__ = ["OVERRIDES"]

#: Every override, in no particular order (dispatch ranks them by priority).
OVERRIDES: tuple[OpOverride, ...] = ()
