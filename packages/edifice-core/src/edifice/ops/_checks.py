"""Argument checks shared by the ops: each failure names the op, the argument, the expected layout and what came."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["broadcasts_to", "expect_floating", "expect_rank", "fmt_shape"]


def fmt_shape(shape: Sequence[int]) -> str:
    """``(2, 3)`` -> ``"[2, 3]"``, the notation of every shape message in Edifice."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def expect_rank(op: str, name: str, value: Any, rank: int, layout: str) -> torch.Tensor:
    """Require a tensor of ``rank`` dimensions; ``layout`` (e.g. ``"[B, T, C]"``) goes into the message."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor {layout}, got {type(value).__name__}")
    if value.dim() != rank:
        raise ValueError(f"{op}: {name} must be {layout} ({rank}-D), got shape {fmt_shape(value.shape)}")
    return value


def expect_floating(op: str, **tensors: torch.Tensor | None) -> None:
    """Require floating-point tensors (``None`` entries are skipped)."""
    for name, value in tensors.items():
        if value is not None and not value.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {value.dtype}")


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (numpy rules, never growing ``target``)."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False))
