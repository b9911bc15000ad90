"""Mapping between the dtype strings used in specs and configs and ``torch.dtype`` objects."""

from __future__ import annotations

import torch

__all__ = ["dtype_name", "to_dtype"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Return the ``torch.dtype`` for a dtype string (``"bfloat16"``) or pass a ``torch.dtype`` through."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """Return the string form of a ``torch.dtype`` (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return str(dtype).removeprefix("torch.")
