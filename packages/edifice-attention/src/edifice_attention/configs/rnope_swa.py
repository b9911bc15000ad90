"""Config of ``rnope_swa``: interleaved NoPE global and RoPE sliding-window attention layers (torch-free).

The model is :mod:`edifice_attention.rnope_swa`, the decoder_only stack with per-layer attention kinds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_attention.configs._decoder_entry import decoder_entry_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["CONVERTERS", "SPECS", "RNoPESWAConfig"]

YANG = Paper("Rope to Nope and Back Again: A New Hybrid Attention Strategy", "Yang et al. (Cohere)", 2025, "2501.18795")


@dataclasses.dataclass(kw_only=True)
class RNoPESWAConfig(DecoderOnlyConfig):
    """RNoPE-SWA: every ``global_every``-th layer is full causal attention without positions, the rest RoPE + SWA."""

    arch: str = field("rnope_swa", "Registry name of the architecture this config builds.")
    window: int | None = field(4096, "Sliding window of the RoPE layers: a query sees itself and window - 1 before.")
    global_every: int = field(4, "Layer i (0-based) is a NoPE global layer when (i + 1) % global_every == 0.")
    parallel_block: bool = field(False, "Cohere-style parallel block: x + Attn(LN(x)) + FFN(LN(x)), one norm.")
    norm_bias: bool = field(True, "LayerNorm has an additive bias (Cohere's has none); ignored for RMSNorm.")
    logit_scale: float = field(1.0, "Logits are multiplied by this (Cohere's logit_scale); needs vocab_size.")

    aliases: ClassVar[Mapping[str, str]] = {**DecoderOnlyConfig.aliases, "sliding_window_pattern": "global_every"}

    def validate(self) -> None:
        """A window and RoPE for the local layers, a positive global period and logit scale."""
        super().validate()
        self.check_positive("global_every", "logit_scale")
        if self.window is None:
            self.fail("window", "must be set: the RoPE layers are sliding-window layers")
        if self.positional != "rope":
            self.fail("positional", "must be 'rope' (the local layers use RoPE; the global ones none)")
        if self.norm_position != "pre":
            self.fail("norm_position", "must be 'pre' (RNoPE-SWA stacks are pre-norm)")

    def is_global(self, index: int) -> bool:
        """Whether layer ``index`` is a NoPE full-attention layer (else a RoPE sliding-window one)."""
        return (index + 1) % self.global_every == 0


SPECS = (
    decoder_entry_spec(
        "rnope_swa",
        summary="Interleaved NoPE global attention and RoPE sliding-window attention layers (Command A, Llama 4).",
        paper=YANG,
        config="edifice_attention.configs.rnope_swa:RNoPESWAConfig",
        model="edifice_attention.rnope_swa:RNoPESWA",
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_ff": 48,
            "vocab_size": 64,
            "window": 4,
            "global_every": 2,
        },
        verification="parity:transformers.Cohere2ForCausalLM",
        interop=("transformers.Cohere2ForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.Cohere2ForCausalLM",
        "rnope_swa",
        "edifice_attention.rnope_swa:from_cohere2",
        "Cohere Command R7B / Command A checkpoints (parallel blocks, NoPE global + RoPE sliding-window layers).",
    ),
)
