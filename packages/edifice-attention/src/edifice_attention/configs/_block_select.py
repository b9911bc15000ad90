"""The config base of the block-selection attentions ``nsa``, ``moba``, ``infllm_v2`` (torch-free)."""

from __future__ import annotations

import dataclasses

from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["BlockSelectConfig"]


@dataclasses.dataclass(kw_only=True)
class BlockSelectConfig(DecoderOnlyConfig):
    """A ``decoder_only`` config whose attention runs over selected key blocks (a full KV cache, no soft-capping)."""

    def validate(self) -> None:
        """No sliding-window cache, soft-capping or attention dropout: the block-sparse op has none of them."""
        super().validate()
        if self.window is not None:
            self.fail("window", "must be None: block selection may pick any past block, so the cache is never a ring")
        if self.softcap is not None:
            self.fail("softcap", "is not supported by block-sparse attention (None here)")
        if self.attention_dropout:
            self.fail("attention_dropout", "is not supported by block-sparse attention (0.0 here)")
