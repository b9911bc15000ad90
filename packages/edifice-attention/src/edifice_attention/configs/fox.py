"""Config of ``fox``: the Forgetting Transformer, softmax attention with a data-dependent forget gate (torch-free).

The model is :mod:`edifice_attention.fox`: the ``decoder_only`` stack whose attention logits get the bias
``D_ij = sum_{l=j+1..i} log f_l`` from per-head forget gates ``f_t = sigmoid(w^T x_t + b)`` (Lin et al., ICLR 2025).
As in the paper, no RoPE by default: the forget gate carries the position information.
"""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["CONVERTERS", "SPECS", "FoxConfig"]

LIN = Paper("Forgetting Transformer: Softmax Attention with a Forget Gate", "Lin et al.", 2025, "2503.02130")


@dataclasses.dataclass(kw_only=True)
class FoxConfig(DecoderOnlyConfig):
    """FoX: ``softmax(q k^T / sqrt(d) + D) V`` with ``D_ij = sum_{l=j+1..i} log sigmoid(w_h^T x_l + b_h)``."""

    arch: str = field("fox", "Registry name of the architecture this config builds.")
    positional: str = field("none", "Position information: 'none' (the paper's FoX: the forget gate suffices), 'rope'.")
    output_gate: bool = field(False, "Elementwise sigmoid output gate before o_proj (the paper's 'Pro' block).")

    def validate(self) -> None:
        """Sinusoidal positions are not part of FoX; soft-capping would apply before the gate bias."""
        super().validate()
        self.check_choice("positional", ("none", "rope"))
        if self.softcap is not None:
            self.fail("softcap", "is not supported by forgetting attention (None here)")
        if self.attention_dropout:
            self.fail("attention_dropout", "is not supported by forgetting attention (0.0 here)")


SPECS = (
    variant_spec(
        "fox",
        "Forgetting Transformer: softmax attention plus the cumulative log forget-gate bias; no RoPE needed.",
        LIN,
        tiny={"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "vocab_size": 64},
        verification="parity:fla.layers.ForgettingAttention",
        interop=("fla.models.ForgettingTransformerForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.ForgettingTransformerForCausalLM",
        "fox",
        "edifice_attention.fox:from_fla",
        "flash-linear-attention Forgetting Transformer checkpoints: input_ids -> logits.",
    ),
)
