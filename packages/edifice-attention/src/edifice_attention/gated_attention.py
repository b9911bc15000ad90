"""Gated attention: a head-specific elementwise sigmoid gate on the output of scaled dot-product attention.

Qiu et al. (2025), "Gated Attention for Large Language Models: Non-linearity, Sparsity, and Attention-Sink-Free",
https://arxiv.org/abs/2505.06708. The gate ``Y' = g(Y, X, W_θ, σ) = Y ⊙ σ(X W_θ)`` (eq. 5) sits at position G1, after
SDPA and before the output projection (§2.2, the paper's best variant: head-specific, elementwise, multiplicative,
sigmoid), with ``X`` the pre-normalised block input that also gives Q, K and V. The rest is the ``decoder_only``
stack (Qwen3-style: qk-norm, GQA, RoPE, SwiGLU, pre-RMSNorm). Qwen3-Next's full-attention layers are this mechanism
(transformers' ``Qwen3NextAttention`` fuses the gate into ``q_proj``); :func:`from_qwen3_next` converts checkpoints
whose layers are all full attention with dense MLPs.

Deviations: only the G1 elementwise gate is built (the paper's other positions, G2-G5, and the head-wise scalar gate
are ablations); the gate projection is a separate ``g_proj`` (Qwen3-Next interleaves it with the queries per head);
the parameter initialisation is decoder_only's N(0, 0.02) (the paper does not specify one for the gate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import edifice
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice_attention._attention_variants import VariantAttention
from edifice_attention.configs.decoder_only import DecoderOnlyConfig
from edifice_attention.configs.gated_attention import GatedAttentionConfig
from edifice_attention.convert import _get, _unpack, llama_config, map_llama_state_dict
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["GatedAttention", "from_qwen3_next", "map_qwen3_next_state_dict"]


class GatedAttention(DecoderOnly):
    """The ``decoder_only`` stack whose attention has the G1 output gate (a :class:`VariantAttention`)."""

    config_class: ClassVar[type[ArchConfig]] = GatedAttentionConfig
    config: GatedAttentionConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s softmax attention with an elementwise sigmoid output gate ``g_proj``."""
        return VariantAttention(**self.attention_kwargs(), output_gate=True)


# -- converter from transformers' Qwen3-Next ----------------------------------------------------------------------
def _check_qwen3_next(hf: Any) -> None:
    kinds = set(_get(hf, "layer_types") or ["full_attention"])
    if kinds != {"full_attention"}:
        raise CheckpointError(
            f"Qwen3-Next converter: layer_types {sorted(kinds)} include linear attention (Gated DeltaNet); only "
            "checkpoints whose layers are all 'full_attention' map onto gated_attention"
        )
    n_layers = _get(hf, "num_hidden_layers")
    dense = set(_get(hf, "mlp_only_layers") or ())
    if _get(hf, "num_experts", 0) and not set(range(n_layers)) <= dense:
        raise CheckpointError("Qwen3-Next converter: sparse MoE layers are not supported; set num_experts=0")


def map_qwen3_next_state_dict(state_dict: Mapping[str, Tensor], config: DecoderOnlyConfig) -> dict[str, Tensor]:
    """Qwen3-Next (all full attention, dense MLPs) keys and values to :class:`GatedAttention`'s.

    ``q_proj`` holds, per head, the ``head_dim`` query rows followed by the ``head_dim`` gate rows; they become
    ``q_proj`` and ``g_proj``. Qwen3-Next's RMSNorms scale by ``1 + weight``; ours by ``weight``.
    """
    H, d = config.n_heads, config.head_size
    plain: dict[str, Tensor] = {}
    gates: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            query, gate = value.reshape(H, 2, d, *value.shape[1:]).unbind(1)  # per head: [query; gate]
            plain[key] = query.reshape(H * d, *value.shape[1:])
            gates[key.replace("q_proj", "g_proj")] = gate.reshape(H * d, *value.shape[1:])
        elif key.endswith("norm.weight"):
            plain[key] = value.float().add(1.0).to(value.dtype)
        else:
            plain[key] = value
    out = map_llama_state_dict(plain, config)
    for key, gate in gates.items():
        if key.endswith(".bias"):
            raise CheckpointError("Qwen3-Next converter: attention_bias=True is not supported (g_proj has no bias)")
        index = key.split("layers.", 1)[1].split(".", 1)[0]
        out[f"layers.{index}.mixer.g_proj.weight"] = gate.detach().clone()
    return out


def from_qwen3_next(source: Any, **overrides: Any) -> GatedAttention:
    """Convert a transformers ``Qwen3NextForCausalLM`` (or ``(config, state_dict)``) to ``gated_attention``.

    Only checkpoints whose layers are all full attention with dense MLPs fit (released Qwen3-Next interleaves
    Gated DeltaNet layers and sparse experts, which raise a :class:`~edifice.CheckpointError`).
    """
    hf, state_dict = _unpack(source)
    _check_qwen3_next(hf)
    base = llama_config(hf, qk_norm=True)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name not in ("arch",)}
    config: GatedAttentionConfig = edifice.config("gated_attention", **{**fields, **overrides})  # type: ignore[assignment]
    weights = map_qwen3_next_state_dict(state_dict, config)
    with torch.device("meta"):
        model = GatedAttention(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"Qwen3-Next converter: the mapped weights do not fit gated_attention: {exc}") from None
    model.tie_weights()
    return model
