"""Converter from transformers' ``ZambaForCausalLM`` / ``ZambaModel`` to ``zamba``.

``source`` is a transformers model instance, or a ``(config, state_dict)`` pair where the config is a transformers
``ZambaConfig`` or its ``config.json`` as a dict; keyword arguments override config fields. transformers itself is
never imported. Key map (``model.`` prefix optional)::

    embed_tokens                                  -> embed_tokens
    layers.N.{input_layernorm, mamba.*}           -> layers.N.{input_layernorm, mamba.*}     (Mamba layer)
    layers.N.mamba_decoder.{input_layernorm, mamba.*} -> the same under layers.N               (hybrid layer)
    layers.N.linear                               -> layers.N.linear
    layers.N.shared_transf.*                      -> shared.*    (tied in transformers: every copy must be equal)
    final_layernorm                               -> norm;   lm_head -> lm_head

transformers interleaves the two halves of the Mamba ``in_proj`` (row ``2i`` feeds the convolution, row ``2i + 1``
the gate); they are de-interleaved into ``[x rows; z rows]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

import edifice
from edifice.errors import CheckpointError, ConfigError
from edifice_ssm.configs.zamba import ZambaConfig
from edifice_ssm.convert_jamba import hf_get, load_converted, unpack_source
from edifice_ssm.zamba import Zamba

__all__ = ["from_zamba", "map_zamba_state_dict", "zamba_config"]

_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")


def zamba_config(hf: Any, **overrides: Any) -> ZambaConfig:
    """The :class:`ZambaConfig` of a transformers ``ZambaConfig`` (object or dict)."""
    act = hf_get(hf, "hidden_mamba_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"transformers ZambaConfig: hidden_mamba_act={act!r} is not supported (Mamba uses 'silu')")
    d_model = hf_get(hf, "hidden_size")
    attention_hidden = hf_get(hf, "attention_hidden_size", 2 * d_model)
    if attention_hidden != 2 * d_model:
        raise ConfigError(
            f"transformers ZambaConfig: attention_hidden_size={attention_hidden} must be 2 * hidden_size = "
            f"{2 * d_model} (the shared block reads [h, embeddings])"
        )
    n_layers = hf_get(hf, "num_hidden_layers")
    types = hf_get(hf, "layers_block_type")
    if types is None:  # transformers' default schedule: layer 2, then every attn_layer_period from offset
        period, offset = hf_get(hf, "attn_layer_period", 6), hf_get(hf, "attn_layer_offset", 4)
        types = ["mamba", "mamba", "hybrid"] + [
            "hybrid" if i % period == offset else "mamba" for i in range(n_layers - 3)
        ]
    hybrid = tuple(i for i, kind in enumerate(types) if kind == "hybrid")
    n_heads = hf_get(hf, "num_attention_heads")
    head_dim = hf_get(hf, "attention_head_dim", 2 * d_model // n_heads)
    dt_rank = hf_get(hf, "mamba_dt_rank", "auto")
    fields: dict[str, Any] = {
        "vocab_size": hf_get(hf, "vocab_size"),
        "d_model": d_model,
        "n_layers": n_layers,
        "hybrid_layers": hybrid,
        "n_mamba_heads": hf_get(hf, "n_mamba_heads", 2),
        "n_heads": n_heads,
        "n_kv_heads": hf_get(hf, "num_key_value_heads", n_heads),
        "head_dim": None if head_dim == 2 * d_model // n_heads else int(head_dim),
        "d_ff": hf_get(hf, "intermediate_size"),
        "activation": hf_get(hf, "hidden_act", "gelu"),
        "d_state": hf_get(hf, "mamba_d_state", 16),
        "d_conv": hf_get(hf, "mamba_d_conv", 4),
        "expand": hf_get(hf, "mamba_expand", 2),
        "dt_rank": None if dt_rank == "auto" else int(dt_rank),
        "conv_bias": bool(hf_get(hf, "mamba_conv_bias", True)),
        "bias": bool(hf_get(hf, "mamba_proj_bias", False)),
        "dt_min": float(hf_get(hf, "time_step_min", 0.001)),
        "dt_max": float(hf_get(hf, "time_step_max", 0.1)),
        "dt_init_floor": float(hf_get(hf, "time_step_floor", 1e-4)),
        "norm_eps": float(hf_get(hf, "rms_norm_eps", 1e-5)),
        "tie_embeddings": bool(hf_get(hf, "tie_word_embeddings", True)),
        "init_std": float(hf_get(hf, "initializer_range", 0.02)),
    }
    return edifice.config("zamba", **{**fields, **overrides})  # type: ignore[return-value]


def _deinterleave(t: Tensor) -> Tensor:
    """transformers' ``in_proj`` rows ``[x_0, z_0, x_1, z_1, ...]`` -> ``[x_0, x_1, ...; z_0, z_1, ...]``."""
    return t.reshape(-1, 2, *t.shape[1:]).transpose(0, 1).reshape(t.shape).clone()


def map_zamba_state_dict(state_dict: Mapping[str, Tensor], config: ZambaConfig) -> dict[str, Tensor]:
    """Rename a transformers Zamba state dict to :class:`~edifice_ssm.zamba.Zamba`'s keys (unknown keys raise).

    The shared block is taken once; its copies under the other hybrid layers must hold the same values.
    """
    out: dict[str, Tensor] = {}
    unknown, untied = [], []
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
        if rest.startswith("shared_transf."):
            target = "shared." + rest.removeprefix("shared_transf.")
            if target in out:
                if out[target].shape != t.shape or not bool((out[target] == t).all()):
                    untied.append(key)
                continue
            out[target] = t
            continue
        rest = rest.removeprefix("mamba_decoder.")
        if rest == "mamba.in_proj.weight" or rest == "mamba.in_proj.bias":
            t = _deinterleave(t)
        if rest == "linear.weight" or rest == "input_layernorm.weight" or rest.startswith("mamba."):
            out[f"layers.{layer}.{rest}"] = t
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"Zamba converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    if untied:
        raise CheckpointError(
            f"Zamba converter: the shared block differs between its applications ({', '.join(sorted(untied))}); "
            "Zamba shares one set of weights"
        )
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
        if "embed_tokens.weight" in out:
            out["lm_head.weight"] = out["embed_tokens.weight"]
    elif config.vocab_size is not None and "lm_head.weight" not in out:
        raise CheckpointError("Zamba converter: untied embeddings but the state dict has no lm_head.weight")
    return out


def from_zamba(source: Any, **overrides: Any) -> Zamba:
    """Convert a transformers ``ZambaForCausalLM``/``ZambaModel`` (or ``(config, state_dict)``) to ``zamba``.

    A ``ZambaModel`` has no LM head: the result ties its head to the embedding (as ``ZambaForCausalLM`` does by
    default), so its logits are ``last_hidden_state @ embed_tokens.T``.
    """
    hf_config, state_dict = unpack_source(source, "Zamba")
    if "lm_head.weight" not in state_dict:
        overrides = {"tie_embeddings": True, **overrides}
    config = zamba_config(hf_config, **overrides)
    model: Zamba = load_converted(Zamba, config, map_zamba_state_dict(state_dict, config))
    return model
