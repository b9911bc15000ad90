"""Converters from transformers' Llama-family checkpoints (Llama, Mistral, Mixtral) to :class:`DecoderOnly`.

Each converter takes ``source`` -- a transformers model instance, or a ``(config, state_dict)`` pair where the config
is a transformers config object or its ``config.json`` as a dict -- builds the Edifice config from it and maps the
weights; keyword arguments override config fields (``output="last"``, ``dropout=0.1``, ...). Registered as
``edifice.convert("transformers.LlamaForCausalLM", hf_model)``. transformers itself is never imported.

Key maps tolerate the layouts of the transformers versions in use: any prefix before ``embed_tokens``/``layers.N``/
``norm``/``lm_head`` (``model.``, ``base_model.model.model.``, none for ``LlamaModel``), Mixtral's per-expert
``block_sparse_moe.experts.N.w1/w2/w3`` (transformers 4) and fused ``mlp.experts.gate_up_proj``/``down_proj``
(transformers 5), and RoPE settings in ``rope_theta``/``rope_scaling`` (4) or ``rope_parameters`` (5).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

import edifice
from edifice.errors import CheckpointError, ConfigError
from edifice_attention.configs.decoder_only import DecoderOnlyConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["from_llama", "from_mistral", "from_mixtral", "llama_config", "map_llama_state_dict"]

_ROOT = re.compile(r"(?:^|\.)(embed_tokens\..+|layers\.\d+\..+|norm\.weight|lm_head\..+)$")
# transformers' per-layer names -> this package's (a TransformerBlock with an Attention mixer).
_LAYER_KEYS = {
    "self_attn.q_proj": "mixer.q_proj",
    "self_attn.k_proj": "mixer.k_proj",
    "self_attn.v_proj": "mixer.v_proj",
    "self_attn.o_proj": "mixer.o_proj",
    "self_attn.q_norm": "mixer.q_norm",
    "self_attn.k_norm": "mixer.k_norm",
    "input_layernorm": "mixer_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn.gate_proj",
    "mlp.up_proj": "ffn.up_proj",
    "mlp.down_proj": "ffn.down_proj",
    "mlp.gate": "ffn.router",  # Mixtral router, transformers 5
    "block_sparse_moe.gate": "ffn.router",  # Mixtral router, transformers 4
}
_EXPERT_V4 = re.compile(r"^block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_EXPERT_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_IGNORED = re.compile(r"rotary_emb\.inv_freq$|\.original_inv_freq$")


# -- config -------------------------------------------------------------------------------------------------------
def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _rope_fields(hf: Any, head_dim: int) -> dict[str, Any]:
    """RoPE fields from ``rope_parameters`` (transformers 5) or ``rope_theta`` and ``rope_scaling`` (4)."""
    params = dict(_get(hf, "rope_parameters") or _get(hf, "rope_scaling") or {})
    base = params.pop("rope_theta", None) or _get(hf, "rope_theta", 10000.0)
    fraction = params.pop("partial_rotary_factor", None) or _get(hf, "partial_rotary_factor", 1.0)
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    fields: dict[str, Any] = {"rope_base": float(base)}
    if fraction != 1.0:
        fields["rotary_dim"] = int(head_dim * fraction)
    if kind != "default":
        if kind == "dynamic":
            # transformers' dynamic NTK grows past max_position_embeddings, which plays the original length's role
            # even where rope_parameters also name an original_max_position_embeddings (that one it ignores).
            params["original_max_position_embeddings"] = _get(hf, "max_position_embeddings")
        fields["rope_scaling"] = {"kind": kind, **{k: v for k, v in params.items() if v is not None}}
    return fields


def llama_config(hf: Any, **overrides: Any) -> DecoderOnlyConfig:
    """The :class:`DecoderOnlyConfig` of a Llama/Mistral/Mixtral transformers config (object or dict)."""
    act = _get(hf, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"transformers config: hidden_act={act!r} is not supported (only SwiGLU, 'silu')")
    n_heads = _get(hf, "num_attention_heads")
    head_dim = _get(hf, "head_dim") or _get(hf, "hidden_size") // n_heads
    fields: dict[str, Any] = {
        "vocab_size": _get(hf, "vocab_size"),
        "d_model": _get(hf, "hidden_size"),
        "n_layers": _get(hf, "num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": _get(hf, "num_key_value_heads") or n_heads,
        "head_dim": head_dim,
        "d_ff": _get(hf, "intermediate_size"),
        "ffn": "swiglu",
        "norm": "rmsnorm",
        "norm_position": "pre",
        "norm_eps": float(_get(hf, "rms_norm_eps", 1e-6)),
        "positional": "rope",
        "attention_bias": bool(_get(hf, "attention_bias", False)),
        "ffn_bias": bool(_get(hf, "mlp_bias", False)),
        "attention_dropout": float(_get(hf, "attention_dropout", 0.0) or 0.0),
        "tie_embeddings": bool(_get(hf, "tie_word_embeddings", False)),
        "window": _get(hf, "sliding_window") if _get(hf, "use_sliding_window", True) else None,
        "init_std": float(_get(hf, "initializer_range", 0.02)),
        **_rope_fields(hf, head_dim),
    }
    if _get(hf, "num_local_experts"):
        fields["n_experts"] = _get(hf, "num_local_experts")
        fields["moe_top_k"] = _get(hf, "num_experts_per_tok", 2)
        fields["moe_aux_loss_coef"] = float(_get(hf, "router_aux_loss_coef", 0.01))
    return edifice.config("decoder_only", **{**fields, **overrides})  # type: ignore[return-value]


# -- weights ------------------------------------------------------------------------------------------------------
def map_llama_state_dict(state_dict: Mapping[str, Tensor], config: DecoderOnlyConfig) -> dict[str, Tensor]:
    """Rename a Llama/Mistral/Mixtral state dict to :class:`DecoderOnly`'s keys (unknown keys raise)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if _IGNORED.search(key):  # RoPE tables that older transformers saved: recomputed here
            continue
        match = _ROOT.search(key)
        if match is None:
            unknown.append(key)
            continue
        # A copy: the converted model must not share (and silently modify) the source model's storage.
        mapped = _map_key(match.group(1), tensor.detach().clone(), config)
        if mapped is None:
            unknown.append(key)
            continue
        out.update(mapped)
    if unknown:
        raise CheckpointError(f"Llama converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    if config.tie_embeddings and "embed_tokens.weight" in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def _map_key(key: str, value: Tensor, config: DecoderOnlyConfig) -> dict[str, Tensor] | None:
    if not key.startswith("layers."):
        return {key: value}
    _, index, rest = key.split(".", 2)
    prefix = f"layers.{index}."
    expert = _EXPERT_V4.match(rest)
    if expert is not None:
        return {f"{prefix}ffn.experts.{expert.group(1)}.{_EXPERT_NAMES[expert.group(2)]}.weight": value}
    if rest == "mlp.experts.gate_up_proj":  # (E, 2F, D): gate rows then up rows per expert
        gate, up = value.chunk(2, dim=1)
        return {
            **{f"{prefix}ffn.experts.{e}.gate_proj.weight": gate[e] for e in range(value.shape[0])},
            **{f"{prefix}ffn.experts.{e}.up_proj.weight": up[e] for e in range(value.shape[0])},
        }
    if rest == "mlp.experts.down_proj":  # (E, D, F)
        return {f"{prefix}ffn.experts.{e}.down_proj.weight": value[e] for e in range(value.shape[0])}
    module, _, leaf = rest.rpartition(".")
    target = _LAYER_KEYS.get(module)
    return None if target is None else {f"{prefix}{target}.{leaf}": value}


# -- converters ---------------------------------------------------------------------------------------------------
def _unpack(source: Any) -> tuple[Any, Mapping[str, Tensor]]:
    if isinstance(source, tuple) and len(source) == 2:
        return source[0], source[1]
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        return source.config, source.state_dict()
    raise TypeError(
        "Llama converter: source must be a transformers model or a (config, state_dict) pair, "
        f"got {type(source).__name__}"
    )


def _convert(source: Any, check: Callable[[Any], None], **overrides: Any) -> DecoderOnly:
    hf_config, state_dict = _unpack(source)
    check(hf_config)
    config = llama_config(hf_config, **overrides)
    weights = map_llama_state_dict(state_dict, config)
    with torch.device("meta"):
        model = DecoderOnly(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"Llama converter: the mapped weights do not fit {config.arch}: {exc}") from None
    model.tie_weights()
    return model


def _check_dense(hf: Any) -> None:
    if _get(hf, "num_local_experts"):
        raise CheckpointError("this checkpoint has experts (num_local_experts); use transformers.MixtralForCausalLM")


def _check_moe(hf: Any) -> None:
    if not _get(hf, "num_local_experts"):
        raise CheckpointError("a Mixtral checkpoint needs num_local_experts in its config")


def from_llama(source: Any, **overrides: Any) -> DecoderOnly:
    """Convert a transformers ``LlamaForCausalLM``/``LlamaModel`` (or ``(config, state_dict)``) to ``decoder_only``."""
    return _convert(source, _check_dense, **overrides)


def from_mistral(source: Any, **overrides: Any) -> DecoderOnly:
    """Convert a transformers ``MistralForCausalLM`` (sliding-window attention) to ``decoder_only``."""
    return _convert(source, _check_dense, **overrides)


def from_mixtral(source: Any, **overrides: Any) -> DecoderOnly:
    """Convert a transformers ``MixtralForCausalLM`` to ``decoder_only`` with its mixture-of-experts FFN."""
    return _convert(source, _check_moe, **overrides)
