"""Config of ``mla``: DeepSeek-V2 multi-head latent attention in the decoder_only stack (torch-free).

The model is :mod:`edifice_attention.mla`; the stack (embedding, pre-norm blocks, SwiGLU FFN, optional Mixtral-style
MoE, LM head) is :class:`~edifice_attention.configs.decoder_only.DecoderOnlyConfig`'s, whose attention fields that
MLA replaces (``n_kv_heads``, ``head_dim``, ``rotary_dim``, ``qk_norm``, ``window``, ``softcap``) must stay unset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_attention.configs._decoder_entry import decoder_entry_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["CONVERTERS", "SPECS", "MLAConfig"]

DEEPSEEK_V2 = Paper(
    "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model",
    "DeepSeek-AI",
    2024,
    "2405.04434",
)

_NOT_MLA = ("n_kv_heads", "head_dim", "rotary_dim", "window", "softcap")


@dataclasses.dataclass(kw_only=True)
class MLAConfig(DecoderOnlyConfig):
    """Multi-head latent attention: keys and values decompressed from a cached low-rank latent, decoupled RoPE keys."""

    arch: str = field("mla", "Registry name of the architecture this config builds.")
    q_lora_rank: int | None = field(None, "Rank d_c' of the query compression (eq. 12); None projects q directly.")
    kv_lora_rank: int = field(16, "Rank d_c of the joint key/value latent c_KV (eq. 9), the cached vector.")
    qk_nope_head_dim: int = field(8, "Per-head size d_h of the decompressed (position-free) key/query part.")
    qk_rope_head_dim: int = field(8, "Per-head size d_h^R of the decoupled RoPE query and shared RoPE key (eq. 14-15).")
    v_head_dim: int = field(8, "Per-head size of the decompressed values.")
    absorb: bool = field(
        True, "Decode (step) in the absorbed form: attend the latent directly (MQA over c_KV), W^UK and W^UV folded."
    )

    aliases: ClassVar[Mapping[str, str]] = {
        **DecoderOnlyConfig.aliases,
        "kv_latent_dim": "kv_lora_rank",
        "q_latent_dim": "q_lora_rank",
        "rope_dim": "qk_rope_head_dim",
    }

    def validate(self) -> None:
        """MLA's sizes are positive, the RoPE part even, and the fields MLA replaces unset."""
        super().validate()
        self.check_positive("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if self.qk_rope_head_dim % 2:
            self.fail("qk_rope_head_dim", "must be even (RoPE rotates feature pairs)")
        if self.positional != "rope":
            self.fail("positional", "must be 'rope' (MLA's decoupled RoPE key, eq. 14)")
        for name in _NOT_MLA:
            if getattr(self, name) is not None:
                self.fail(name, "does not apply to MLA (set kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, ...)")
        if self.qk_norm:
            self.fail("qk_norm", "does not apply to MLA (its latents are RMS-normalised instead)")

    @property
    def qk_head_dim(self) -> int:
        """Query/key head size d_h + d_h^R (the softmax scale is its inverse square root)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim


SPECS = (
    decoder_entry_spec(
        "mla",
        summary="Multi-head latent attention (DeepSeek-V2): a low-rank KV latent is cached, RoPE keys are decoupled.",
        paper=DEEPSEEK_V2,
        config="edifice_attention.configs.mla:MLAConfig",
        model="edifice_attention.mla:MLA",
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "d_ff": 48,
            "vocab_size": 64,
            "q_lora_rank": 12,
            "kv_lora_rank": 8,
            "qk_nope_head_dim": 6,
            "qk_rope_head_dim": 4,
            "v_head_dim": 6,
        },
        verification="parity:transformers.DeepseekV3ForCausalLM",
        interop=("transformers.DeepseekV3ForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.DeepseekV3ForCausalLM",
        "mla",
        "edifice_attention.mla:from_deepseek_v3",
        "DeepSeek-V3 (and V2-layout) checkpoints whose layers are all dense (first_k_dense_replace >= layers).",
    ),
)
