"""Shared steps of the converters from transformers decoder checkpoints onto decoder_only-based entries.

:func:`rename_state_dict` maps ``...embed_tokens``/``layers.N.<module>``/``norm``/``lm_head`` keys (any prefix) through
a per-layer module table, with an optional per-key transform (e.g. de-interleaving RoPE rows); unknown keys raise.
:func:`load_converted` builds the entry on the meta device and assigns the weights, with a report on mismatch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from edifice.errors import CheckpointError
from edifice.sequence import SequenceConfig

__all__ = ["deinterleave_rows", "load_converted", "rename_state_dict"]

M = TypeVar("M", bound=nn.Module)

_ROOT = re.compile(r"(?:^|\.)(embed_tokens\..+|layers\.\d+\..+|norm\.weight|lm_head\..+)$")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$|\.original_inv_freq$")


def rename_state_dict(
    state_dict: Mapping[str, Tensor],
    layer_keys: Mapping[str, str],
    config: SequenceConfig,
    *,
    who: str,
    transform: Callable[[str, Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Rename (copies of) the weights; ``transform(module, tensor)`` may rewrite a layer's tensor (its HF module)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if _IGNORED.search(key):  # RoPE tables some transformers versions saved: recomputed here
            continue
        match = _ROOT.search(key)
        if match is None:
            unknown.append(key)
            continue
        name, value = match.group(1), tensor.detach().clone()  # a copy: never alias the source model
        if name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            module, _, leaf = rest.rpartition(".")
            target = layer_keys.get(module)
            if target is None:
                unknown.append(key)
                continue
            value = transform(module, value) if transform is not None else value
            name = f"layers.{index}.{target}.{leaf}"
        out[name] = value
    if unknown:
        raise CheckpointError(f"{who} converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    if config.tie_embeddings and "embed_tokens.weight" in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def load_converted(
    model_class: Callable[[Any], M], config: SequenceConfig, weights: dict[str, Tensor], *, who: str
) -> M:
    """Build ``model_class(config)`` on the meta device and assign ``weights`` (strict), re-tying tied weights."""
    with torch.device("meta"):
        model = model_class(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{who} converter: the mapped weights do not fit {config.arch}: {exc}") from None
    tie = getattr(model, "tie_weights", None)
    if tie is not None:
        tie()
    return model


def deinterleave_rows(value: Tensor, start: int, width: int, period: int) -> Tensor:
    """Reorder rows ``[start, start + width)`` of every ``period``-row block from interleaved RoPE pairs
    ``(x0, x1), (x2, x3), ...`` to the rotate-half layout ``(x0, x2, ..., x1, x3, ...)`` (weights or biases)."""
    perm = torch.cat([torch.arange(0, width, 2), torch.arange(1, width, 2)]) + start
    blocks = value.reshape(-1, period, *value.shape[1:]).clone()
    blocks[:, start : start + width] = blocks[:, perm]
    return blocks.reshape(value.shape)
