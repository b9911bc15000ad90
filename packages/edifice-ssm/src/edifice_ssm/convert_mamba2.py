"""Converter from transformers' Mamba-2 checkpoints (``Mamba2ForCausalLM``, ``Mamba2Model``) to :class:`MambaSSD`.

``source`` is a transformers model instance or a ``(config, state_dict)`` pair where the config is a transformers
``Mamba2Config`` or its ``config.json`` as a dict; keyword arguments override config fields (``output="last"``, ...).
Registered as ``edifice.convert("transformers.Mamba2ForCausalLM", hf_model)``; transformers itself is never imported.

Keys: any prefix before ``embeddings``/``embedding``/``layers.N``/``norm_f``/``lm_head`` (``backbone.`` in the LM,
none in ``Mamba2Model``). A checkpoint without ``lm_head.weight`` (``Mamba2Model``) gets a head tied to the token
embedding, as the released Mamba-2 language models have. The mixer's parameter names are the same on both sides; the
convolution weight ``[C, 1, K]`` becomes ``[C, K]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import edifice
from edifice.errors import CheckpointError, ConfigError
from edifice_ssm.configs.mamba_ssd import MambaSSDConfig
from edifice_ssm.mamba_ssd import MambaSSD

__all__ = ["from_mamba2", "mamba2_config", "map_mamba2_state_dict"]

_ROOT = re.compile(r"(?:^|\.)(embeddings?\.weight|layers\.\d+\..+|norm_f\.weight|lm_head\.weight)$")
_TOP = {
    "embeddings.weight": "embed_tokens.weight",
    "embedding.weight": "embed_tokens.weight",
    "norm_f.weight": "norm.weight",
}
# The mixer's parameters have the same names on both sides.
_MIXER = frozenset(
    {"in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight"}
    | {"out_proj.weight", "out_proj.bias"}
)


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def mamba2_config(hf: Any, *, tie_embeddings: bool | None = None, **overrides: Any) -> MambaSSDConfig:
    """The :class:`MambaSSDConfig` of a transformers ``Mamba2Config`` (object or dict)."""
    act = _get(hf, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"Mamba2 converter: hidden_act={act!r} is not supported (Mamba-2 uses SiLU)")
    low, high = (float(v) for v in (_get(hf, "time_step_limit") or (0.0, math.inf)))
    if low > 0.0 or high != math.inf:
        raise ConfigError(f"Mamba2 converter: time_step_limit=({low}, {high}) is not supported (no dt clamp here)")
    d_model, expand = _get(hf, "hidden_size"), _get(hf, "expand", 2)
    n_heads, head_dim = _get(hf, "num_heads"), _get(hf, "head_dim")
    if n_heads * head_dim != expand * d_model:
        raise ConfigError(
            f"Mamba2 converter: num_heads * head_dim = {n_heads * head_dim} must equal expand * hidden_size = "
            f"{expand * d_model}"
        )
    fields: dict[str, Any] = {
        "vocab_size": _get(hf, "vocab_size"),
        "d_model": d_model,
        "n_layers": _get(hf, "num_hidden_layers"),
        "d_state": _get(hf, "state_size"),
        "d_conv": _get(hf, "conv_kernel", 4),
        "expand": expand,
        "head_dim": head_dim,
        "n_groups": _get(hf, "n_groups", 1),
        "chunk_size": _get(hf, "chunk_size", 256),
        "conv_bias": bool(_get(hf, "use_conv_bias", True)),
        "bias": bool(_get(hf, "use_bias", False)),
        "norm_eps": float(_get(hf, "layer_norm_epsilon", 1e-5)),
        "dt_min": float(_get(hf, "time_step_min", 0.001)),
        "dt_max": float(_get(hf, "time_step_max", 0.1)),
        "dt_init_floor": float(_get(hf, "time_step_floor", 1e-4)),
        "tie_embeddings": bool(_get(hf, "tie_word_embeddings", False)) if tie_embeddings is None else tie_embeddings,
    }
    return edifice.config("mamba_ssd", **{**fields, **overrides})  # type: ignore[return-value]


def map_mamba2_state_dict(state_dict: Mapping[str, Tensor], config: MambaSSDConfig) -> dict[str, Tensor]:
    """Rename a Mamba-2 state dict to :class:`MambaSSD`'s keys (unknown keys raise :class:`CheckpointError`)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        match = _ROOT.search(key)
        mapped = None if match is None else _map_key(match.group(1))
        if mapped is None:
            unknown.append(key)
            continue
        # A copy: the converted model must not share (and silently modify) the source model's storage.
        value = tensor.detach().clone()
        out[mapped] = value.squeeze(1) if mapped.endswith("conv1d.weight") else value
    if unknown:
        raise CheckpointError(f"Mamba2 converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    if config.tie_embeddings and "embed_tokens.weight" in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def _map_key(key: str) -> str | None:
    if key in _TOP or key == "lm_head.weight":
        return _TOP.get(key, key)
    _, index, rest = key.split(".", 2)
    if rest == "norm.weight":
        return f"layers.{index}.mixer_norm.weight"
    if rest.startswith("mixer.") and rest.removeprefix("mixer.") in _MIXER:
        return f"layers.{index}.{rest}"
    return None


def _unpack(source: Any) -> tuple[Any, Mapping[str, Tensor]]:
    if isinstance(source, tuple) and len(source) == 2:
        return source[0], source[1]
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        return source.config, source.state_dict()
    raise TypeError(
        "Mamba2 converter: source must be a transformers model or a (config, state_dict) pair, "
        f"got {type(source).__name__}"
    )


def from_mamba2(source: Any, **overrides: Any) -> MambaSSD:
    """Convert a transformers ``Mamba2ForCausalLM``/``Mamba2Model`` (or ``(config, state_dict)``) to ``mamba_ssd``."""
    hf_config, state_dict = _unpack(source)
    has_head = any(key.endswith("lm_head.weight") for key in state_dict)
    config = mamba2_config(hf_config, tie_embeddings=None if has_head else True, **overrides)
    weights = map_mamba2_state_dict(state_dict, config)
    with torch.device("meta"):
        model = MambaSSD(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"Mamba2 converter: the mapped weights do not fit mamba_ssd: {exc}") from None
    model.tie_weights()
    return model
