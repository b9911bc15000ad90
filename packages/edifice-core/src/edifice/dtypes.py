"""Mapping between the dtype strings used in specs and configs and ``torch.dtype`` objects, and the precision that
states, scans and norms compute in (DESIGN §4: fp32, or fp64 when the inputs are fp64, as the tests' oracles are)."""

from __future__ import annotations

import torch

__all__ = ["compute_dtype", "dtype_name", "to_dtype", "upcast"]

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


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The precision to compute in: fp32 for 16- and 32-bit inputs, fp64 when any input is fp64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in :func:`compute_dtype` precision: fp32 for 16- and 32-bit tensors, fp64 kept."""
    return t.to(compute_dtype(t))
