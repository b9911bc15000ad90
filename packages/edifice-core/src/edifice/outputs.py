"""Structured model outputs and recurrent states: dataclasses registered as pytrees.

Outputs with more than one tensor are dataclasses with named fields (never bare tuples); registering them as pytree
nodes lets ``torch.compile``, ``torch.func`` and the contract kit walk their tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, TypeVar, dataclass_transform

import torch
import torch.utils._pytree as pytree

__all__ = ["model_output", "tensor_leaves"]

T = TypeVar("T", bound=type)


@dataclass_transform()
def model_output(cls: T) -> T:
    """Class decorator: make ``cls`` a dataclass and register it as a pytree node (for outputs and states)."""
    if not dataclasses.is_dataclass(cls):
        cls = dataclasses.dataclass(cls)  # type: ignore[assignment]
    pytree.register_dataclass(cls)
    return cls


def tensor_leaves(value: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(path, tensor)`` for every tensor in a nested output (dataclass, dict, tuple or tensor)."""
    leaves, _ = pytree.tree_flatten_with_path(value)
    for path, leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            yield pytree.keystr(path), leaf
