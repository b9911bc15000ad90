"""Config of ``ring_attention``: exact causal attention with the sequence sharded over ranks (torch-free).

The model is :mod:`edifice_attention.ring_attention`: the decoder_only stack whose attention is computed blockwise
(one process) or around a ring of ``torch.distributed`` ranks (Liu et al. 2023).
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._decoder_entry import decoder_entry_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "RingAttentionConfig"]

LIU = Paper("Ring Attention with Blockwise Transformers for Near-Infinite Context", "Liu et al.", 2023, "2310.01889")


@dataclasses.dataclass(kw_only=True)
class RingAttentionConfig(DecoderOnlyConfig):
    """Ring attention: key/value blocks visit every query block; partial softmaxes merge by log-sum-exp."""

    arch: str = field("ring_attention", "Registry name of the architecture this config builds.")
    num_chunks: int = field(4, "Key/value blocks of the one-process simulation (on a ring: one block per rank).")

    def validate(self) -> None:
        """Positive num_chunks; no window, softcap or attention dropout (the blockwise merge is exact attention)."""
        super().validate()
        self.check_positive("num_chunks")
        for name in ("window", "softcap"):
            if getattr(self, name) is not None:
                self.fail(name, "is not supported by ring_attention (None only)")
        if self.attention_dropout:
            self.fail("attention_dropout", "must be 0 for ring_attention")


SPECS = (
    decoder_entry_spec(
        "ring_attention",
        summary="Ring attention: blockwise causal attention over ranks, KV blocks rotate, log-sum-exp merge.",
        paper=LIU,
        config="edifice_attention.configs.ring_attention:RingAttentionConfig",
        model="edifice_attention.ring_attention:RingAttention",
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_ff": 48,
            "vocab_size": 64,
            "num_chunks": 3,
        },
        verification=(
            "property:log-sum-exp merge = one softmax over the union (fp64 oracle); blockwise and 2-process gloo ring"
            " = dense causal attention, forward and backward"
        ),
    ),
)
