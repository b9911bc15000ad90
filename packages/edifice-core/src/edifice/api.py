"""Torch-backed top-level helpers: example inputs and checkpoint conversion."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edifice.config import ArchConfig
from edifice.errors import UnknownArchitecture
from edifice.inputs import example_inputs as _example_inputs
from edifice.plugins import load_object
from edifice.registry import config as _config
from edifice.registry import converters, get_spec

__all__ = ["convert", "example_inputs"]


def example_inputs(
    name_or_model: str | nn.Module,
    batch_size: int = 2,
    *,
    generator: torch.Generator | None = None,
    **dims: int,
) -> dict[str, torch.Tensor]:
    """Random inputs for an architecture name (its default config) or a built model, called as ``model(**inputs)``."""
    if isinstance(name_or_model, str):
        cfg: ArchConfig = _config(name_or_model)
        device = None
    else:
        found = getattr(name_or_model, "config", None)
        if not isinstance(found, ArchConfig):
            raise TypeError(f"example_inputs expects an architecture name or an Edifice model, got {name_or_model!r}")
        cfg = found
        device = next(name_or_model.parameters(), torch.empty(0)).device
    spec = get_spec(cfg.arch)
    return _example_inputs(spec, cfg, batch_size, device=device, generator=generator, dims=dims)


def convert(name: str, source: Any, **kwargs: Any) -> nn.Module:
    """Convert a foreign model or checkpoint with the converter registered as ``name`` (``edifice.converters()``).

    The model comes back in eval mode, as from :func:`edifice.load` (and ``transformers``' ``from_pretrained``).
    """
    table = converters()
    if name not in table:
        raise UnknownArchitecture(f"unknown converter {name!r}; registered converters: {', '.join(sorted(table))}")
    fn = load_object(table[name].fn)
    model: nn.Module = fn(source, **kwargs)
    return model.eval()
