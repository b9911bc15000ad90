"""Converter from transformers' ``JambaForCausalLM`` / ``JambaModel`` to ``jamba``.

``source`` is a transformers model instance, or a ``(config, state_dict)`` pair where the config is a transformers
``JambaConfig`` or its ``config.json`` as a dict; keyword arguments override config fields. transformers itself is
never imported. Key map (``model.`` prefix optional)::

    embed_tokens                          -> embed_tokens
    layers.N.input_layernorm              -> layers.N.mixer_norm
    layers.N.pre_ff_layernorm             -> layers.N.ffn_norm
    layers.N.mamba.* / self_attn.*        -> layers.N.mixer.*          (same parameter names)
    layers.N.feed_forward.{gate,up,down}_proj -> layers.N.ffn.*        (dense MLP)
    layers.N.feed_forward.router          -> layers.N.ffn.router
    layers.N.feed_forward.experts.gate_up_proj [E, 2I, H] -> experts.e.gate_proj (first I rows), up_proj (last I)
    layers.N.feed_forward.experts.down_proj    [E, H, I]  -> experts.e.down_proj
    final_layernorm                       -> norm;   lm_head -> lm_head

Per-expert checkpoints (``experts.e.{gate,up,down}_proj.weight``, older transformers) map one to one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

import edifice
from edifice.errors import CheckpointError, ConfigError
from edifice_ssm.configs.jamba import JambaConfig
from edifice_ssm.jamba import Jamba

__all__ = ["from_jamba", "hf_get", "jamba_config", "load_converted", "map_jamba_state_dict", "unpack_source"]

_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")
_RENAMES = (
    (re.compile(r"^input_layernorm\.weight$"), r"mixer_norm.weight"),
    (re.compile(r"^pre_ff_layernorm\.weight$"), r"ffn_norm.weight"),
    (re.compile(r"^(?:mamba|self_attn)\.(.+)$"), r"mixer.\1"),
    (re.compile(r"^feed_forward\.((?:gate|up|down)_proj\.weight)$"), r"ffn.\1"),
    (re.compile(r"^feed_forward\.router\.weight$"), r"ffn.router.weight"),
    (re.compile(r"^feed_forward\.experts\.(\d+)\.((?:gate|up|down)_proj\.weight)$"), r"ffn.experts.\1.\2"),
)


def hf_get(config: Any, name: str, default: Any = None) -> Any:
    """A field of a transformers config object or ``config.json`` dict (``default`` when absent or None)."""
    value = config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)
    return default if value is None else value


def unpack_source(source: Any, label: str) -> tuple[Any, Mapping[str, Tensor]]:
    """``(config, state_dict)`` of a transformers model or of such a pair."""
    if isinstance(source, tuple) and len(source) == 2:
        return source[0], source[1]
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        return source.config, source.state_dict()
    raise TypeError(
        f"{label} converter: source must be a transformers model or a (config, state_dict) pair, "
        f"got {type(source).__name__}"
    )


def load_converted(model_class: Callable[[Any], nn.Module], config: Any, weights: Mapping[str, Tensor]) -> Any:
    """Build ``model_class(config)`` on the meta device and assign ``weights`` (strict); re-tie shared weights."""
    with torch.device("meta"):
        model = model_class(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{config.arch} converter: the mapped weights do not fit {config.arch}: {exc}") from None
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()
    return model


def jamba_config(hf: Any, **overrides: Any) -> JambaConfig:
    """The :class:`JambaConfig` of a transformers ``JambaConfig`` (object or dict)."""
    act = hf_get(hf, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"transformers JambaConfig: hidden_act={act!r} is not supported (Jamba's Mamba uses 'silu')")
    d_model = hf_get(hf, "hidden_size")
    n_heads = hf_get(hf, "num_attention_heads")
    head_dim = hf_get(hf, "head_dim")
    dt_rank = hf_get(hf, "mamba_dt_rank", "auto")
    fields: dict[str, Any] = {
        "vocab_size": hf_get(hf, "vocab_size"),
        "d_model": d_model,
        "n_layers": hf_get(hf, "num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": hf_get(hf, "num_key_value_heads", n_heads),
        "head_dim": None if head_dim in (None, d_model // n_heads) else int(head_dim),
        "attn_layer_period": hf_get(hf, "attn_layer_period", 8),
        "attn_layer_offset": hf_get(hf, "attn_layer_offset", 4),
        "expert_layer_period": hf_get(hf, "expert_layer_period", 2),
        "expert_layer_offset": hf_get(hf, "expert_layer_offset", 1),
        "n_experts": hf_get(hf, "num_experts", 16),
        "top_k": hf_get(hf, "num_experts_per_tok", 2),
        "d_ff": hf_get(hf, "intermediate_size"),
        "aux_loss_coef": float(hf_get(hf, "router_aux_loss_coef", 0.001)),
        "d_state": hf_get(hf, "mamba_d_state", 16),
        "d_conv": hf_get(hf, "mamba_d_conv", 4),
        "expand": hf_get(hf, "mamba_expand", 2),
        "dt_rank": None if dt_rank == "auto" else int(dt_rank),
        "conv_bias": bool(hf_get(hf, "mamba_conv_bias", True)),
        "bias": bool(hf_get(hf, "mamba_proj_bias", False)),
        "norm_eps": float(hf_get(hf, "rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf_get(hf, "tie_word_embeddings", False)),
        "init_std": float(hf_get(hf, "initializer_range", 0.02)),
    }
    return edifice.config("jamba", **{**fields, **overrides})  # type: ignore[return-value]


def map_jamba_state_dict(state_dict: Mapping[str, Tensor], config: JambaConfig) -> dict[str, Tensor]:
    """Rename a transformers Jamba state dict to :class:`~edifice_ssm.jamba.Jamba`'s keys (unknown keys raise)."""
    out: dict[str, Tensor] = {}
    unknown = []
    I = config.ffn_dim  # noqa: E741 - the paper's name for the expert width
    for key, tensor in state_dict.items():
        t = tensor.detach().clone()  # the converted model must not share the source's storage
        bare = key.removeprefix("model.")
        if bare == "embed_tokens.weight":
            out["embed_tokens.weight"] = t
            continue
        if bare == "final_layernorm.weight":
            out["norm.weight"] = t
            continue
        if key == "lm_head.weight":
            out["lm_head.weight"] = t
            continue
        match = _LAYER.match(key)
        if match is None:
            unknown.append(key)
            continue
        layer, rest = match.groups()
        prefix = f"layers.{layer}."
        if rest == "feed_forward.experts.gate_up_proj":  # (E, 2I, H): gate rows then up rows
            for e in range(t.shape[0]):
                out[f"{prefix}ffn.experts.{e}.gate_proj.weight"] = t[e, :I].clone()
                out[f"{prefix}ffn.experts.{e}.up_proj.weight"] = t[e, I:].clone()
            continue
        if rest == "feed_forward.experts.down_proj":  # (E, H, I)
            for e in range(t.shape[0]):
                out[f"{prefix}ffn.experts.{e}.down_proj.weight"] = t[e].clone()
            continue
        for pattern, repl in _RENAMES:
            if pattern.match(rest):
                out[prefix + pattern.sub(repl, rest)] = t
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"Jamba converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
        if "embed_tokens.weight" in out:
            out["lm_head.weight"] = out["embed_tokens.weight"]
    elif config.vocab_size is not None and "lm_head.weight" not in out:
        raise CheckpointError("Jamba converter: untied embeddings but the state dict has no lm_head.weight")
    return out


def from_jamba(source: Any, **overrides: Any) -> Jamba:
    """Convert a transformers ``JambaForCausalLM``/``JambaModel`` (or ``(config, state_dict)``) to ``jamba``.

    A ``JambaModel`` has no LM head: the result ties its head to the embedding, so its logits are
    ``last_hidden_state @ embed_tokens.T``.
    """
    hf_config, state_dict = unpack_source(source, "Jamba")
    if "lm_head.weight" not in state_dict:
        overrides = {"tie_embeddings": True, **overrides}
    config = jamba_config(hf_config, **overrides)
    model: Jamba = load_converted(Jamba, config, map_jamba_state_dict(state_dict, config))
    return model
