"""Config of ``dual_chunk_attention``: training-free context extension by chunked RoPE positions (torch-free).

The model is :mod:`edifice_attention.dual_chunk_attention`: the decoder_only stack whose attention remaps RoPE
positions per (query chunk, key chunk) pair (An et al. 2024, ChunkLlama; Qwen2.5-1M).
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._decoder_entry import decoder_entry_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "DualChunkAttentionConfig"]

AN = Paper("Training-Free Long-Context Scaling of Large Language Models", "An et al.", 2024, "2402.17463")


@dataclasses.dataclass(kw_only=True)
class DualChunkAttentionConfig(DecoderOnlyConfig):
    """Dual chunk attention: intra-, successive- and inter-chunk RoPE position indices keep every distance seen."""

    arch: str = field("dual_chunk_attention", "Registry name of the architecture this config builds.")
    chunk_size: int = field(
        3072 - 256, "Chunk length s; keys sit at position j mod s. ChunkLlama: 3/4 of the training length minus w."
    )
    local_window: int = field(
        256, "w: successive-chunk queries sit at min(i mod s + s, s + w), inter-chunk ones at min(2s - 1, s + w)."
    )

    def validate(self) -> None:
        """Positive chunk and window; no sliding window or RoPE scaling on top (DCA is the extension)."""
        super().validate()
        self.check_positive("chunk_size", "local_window")
        if self.positional != "rope":
            self.fail("positional", "must be 'rope' (DCA remaps rotary position indices)")
        if self.window is not None:
            self.fail("window", "does not apply to dual chunk attention (every key is attended)")
        if self.rope_scaling is not None:
            self.fail("rope_scaling", "does not combine with dual chunk attention here (its positions stay < s + w)")

    @property
    def max_relative_position(self) -> int:
        """The largest query-key position difference DCA ever forms: ``s + w`` (it must lie within training)."""
        return self.chunk_size + self.local_window


SPECS = (
    decoder_entry_spec(
        "dual_chunk_attention",
        summary="Dual chunk attention (ChunkLlama, Qwen2.5-1M): intra/successive/inter-chunk RoPE position remapping.",
        paper=AN,
        config="edifice_attention.configs.dual_chunk_attention:DualChunkAttentionConfig",
        model="edifice_attention.dual_chunk_attention:DualChunkAttention",
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_ff": 48,
            "vocab_size": 64,
            "chunk_size": 4,
            "local_window": 2,
        },
        verification="oracle:An et al. 2024 §3 (intra/successive/inter-chunk position indices), fp64",
        interop=("transformers.LlamaForCausalLM",),
    ),
)
