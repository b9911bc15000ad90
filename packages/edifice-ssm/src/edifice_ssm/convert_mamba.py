"""Converter from transformers' ``MambaModel`` / ``MambaForCausalLM`` (and ``mamba_ssm`` state dicts) to ``mamba``.

``source`` is a transformers model instance, or a ``(config, state_dict)`` pair where the config is a transformers
``MambaConfig`` or its ``config.json`` as a dict; keyword arguments override config fields. transformers itself is
never imported. The mixer's parameters keep the reference names (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``,
``A_log``, ``D``, ``out_proj``), so the key map only moves prefixes: ``backbone.``/none, ``embeddings``/``embedding``
-> ``embed_tokens``, ``layers.N.norm`` -> ``layers.N.mixer_norm``, ``norm_f`` -> ``norm``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import edifice
from edifice.errors import CheckpointError, ConfigError
from edifice_ssm.configs.mamba import MambaConfig
from edifice_ssm.mamba import Mamba

__all__ = ["from_mamba", "mamba_config", "map_mamba_state_dict"]

_ROOT = re.compile(r"(?:^|\.)(embeddings?\.weight|layers\.\d+\..+|norm_f\.weight|lm_head\.weight)$")
_RENAMES = (
    (re.compile(r"^embeddings?\.weight$"), "embed_tokens.weight"),
    (re.compile(r"^norm_f\.weight$"), "norm.weight"),
    (re.compile(r"^layers\.(\d+)\.norm\.weight$"), r"layers.\1.mixer_norm.weight"),
    (re.compile(r"^layers\.(\d+)\.mixer\.(.+)$"), r"layers.\1.mixer.\2"),
    (re.compile(r"^lm_head\.weight$"), "lm_head.weight"),
)


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def mamba_config(hf: Any, **overrides: Any) -> MambaConfig:
    """The :class:`MambaConfig` of a transformers ``MambaConfig`` (object or dict)."""
    act = _get(hf, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"transformers MambaConfig: hidden_act={act!r} is not supported (Mamba uses 'silu')")
    d_model = _get(hf, "hidden_size")
    d_inner = _get(hf, "intermediate_size") or 2 * d_model
    if d_inner % d_model:
        raise ConfigError(f"transformers MambaConfig: intermediate_size={d_inner} must be a multiple of {d_model}")
    dt_rank = _get(hf, "time_step_rank", "auto")
    fields: dict[str, Any] = {
        "vocab_size": _get(hf, "vocab_size"),
        "d_model": d_model,
        "n_layers": _get(hf, "num_hidden_layers"),
        "d_state": _get(hf, "state_size", 16),
        "expand": d_inner // d_model,
        "d_conv": _get(hf, "conv_kernel", 4),
        "dt_rank": None if dt_rank == "auto" else int(dt_rank),
        "conv_bias": bool(_get(hf, "use_conv_bias", True)),
        "bias": bool(_get(hf, "use_bias", False)),
        "norm_eps": float(_get(hf, "layer_norm_epsilon", 1e-5)),
        "dt_min": float(_get(hf, "time_step_min", 0.001)),
        "dt_max": float(_get(hf, "time_step_max", 0.1)),
        "dt_init_floor": float(_get(hf, "time_step_floor", 1e-4)),
        "dt_scale": float(_get(hf, "time_step_scale", 1.0)),
        "dt_init": _get(hf, "time_step_init_scheme", "random"),
        "tie_embeddings": bool(_get(hf, "tie_word_embeddings", True)),
        "init_std": float(_get(hf, "initializer_range", 0.1)),
    }
    return edifice.config("mamba", **{**fields, **overrides})  # type: ignore[return-value]


def map_mamba_state_dict(state_dict: Mapping[str, Tensor], config: MambaConfig) -> dict[str, Tensor]:
    """Rename a transformers/``mamba_ssm`` Mamba state dict to :class:`Mamba`'s keys (unknown keys raise)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        match = _ROOT.search(key)
        name = None if match is None else match.group(1)
        target = None
        for pattern, repl in _RENAMES:
            if name is not None and pattern.match(name):
                target = pattern.sub(repl, name)
                break
        if target is None:
            unknown.append(key)
            continue
        # A copy: the converted model must not share (and silently modify) the source model's storage.
        out[target] = tensor.detach().clone()
    if unknown:
        raise CheckpointError(f"Mamba converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
        if "embed_tokens.weight" in out:
            out["lm_head.weight"] = out["embed_tokens.weight"]
    elif config.vocab_size is not None and "lm_head.weight" not in out:  # a feature-input model has no head
        raise CheckpointError("Mamba converter: untied embeddings but the state dict has no lm_head.weight")
    return out


def _unpack(source: Any) -> tuple[Any, Mapping[str, Tensor]]:
    if isinstance(source, tuple) and len(source) == 2:
        return source[0], source[1]
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        return source.config, source.state_dict()
    raise TypeError(
        "Mamba converter: source must be a transformers model or a (config, state_dict) pair, "
        f"got {type(source).__name__}"
    )


def from_mamba(source: Any, **overrides: Any) -> Mamba:
    """Convert a transformers ``MambaModel``/``MambaForCausalLM`` (or ``(config, state_dict)``) to ``mamba``.

    A ``MambaModel`` has no LM head: the result ties its head to the embedding (as ``MambaForCausalLM`` does by
    default), so its logits are ``last_hidden_state @ embeddings.T``.
    """
    hf_config, state_dict = _unpack(source)
    config = mamba_config(hf_config, **overrides)
    weights = map_mamba_state_dict(state_dict, config)
    with torch.device("meta"):
        model = Mamba(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"Mamba converter: the mapped weights do not fit {config.arch}: {exc}") from None
    model.tie_weights()
    return model
