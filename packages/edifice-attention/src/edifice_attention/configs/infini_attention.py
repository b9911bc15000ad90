"""Config of ``infini_attention``: segment-local attention plus a compressive memory (torch-free).

The model is :mod:`edifice_attention.infini_attention`: the decoder_only stack whose attention is Infini-attention
(Munkhdalai et al. 2024).
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._decoder_entry import decoder_entry_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "InfiniAttentionConfig"]

MUNKHDALAI = Paper(
    "Leave No Context Behind: Efficient Infinite Context Transformers with Infini-attention",
    "Munkhdalai et al.",
    2024,
    "2404.07143",
)
UPDATES = ("linear", "delta")


@dataclasses.dataclass(kw_only=True)
class InfiniAttentionConfig(DecoderOnlyConfig):
    """Infini-attention: causal softmax attention within a segment, gated with a compressive memory of the past."""

    arch: str = field("infini_attention", "Registry name of the architecture this config builds.")
    segment_size: int = field(2048, "Segment length N: local attention stays within a segment (paper: 2K).")
    memory_update: str = field("delta", "Memory update: 'linear' (eq. 7) or 'delta' (eq. 9, Linear + Delta).")
    memory_eps: float = field(1e-6, "Added to the memory normalisers σ(Q)z and σ(K)z (the empty memory reads 0).")

    def validate(self) -> None:
        """Positive segment size and eps, a known update; no sliding window (the segment is the window)."""
        super().validate()
        self.check_positive("segment_size", "memory_eps")
        if self.memory_update not in UPDATES:
            self.fail("memory_update", f"must be one of {UPDATES}")
        if self.window is not None:
            self.fail("window", "does not apply to infini_attention (local attention is the segment)")


SPECS = (
    decoder_entry_spec(
        "infini_attention",
        summary="Infini-attention: segment-local softmax attention + ELU+1 compressive memory (linear/delta), gated.",
        paper=MUNKHDALAI,
        config="edifice_attention.configs.infini_attention:InfiniAttentionConfig",
        model="edifice_attention.infini_attention:InfiniAttention",
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_ff": 48,
            "vocab_size": 64,
            "segment_size": 4,
        },
        verification="oracle:Munkhdalai et al. 2024 eq. 2, 7-10 (linear and delta memory updates), fp64",
    ),
)
