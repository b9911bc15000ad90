"""Config of ``sigmoid_attention``: attention weights ``sigmoid(QK^T/sqrt(d) + b)``, ``b = -log n`` (torch-free).

The model is :mod:`edifice_attention.sigmoid_attention`: the ``decoder_only`` stack whose attention replaces the
row softmax with an elementwise sigmoid (Ramapuram et al., ICLR 2025).
"""

from __future__ import annotations

import dataclasses
import math

from edifice import Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "SigmoidAttentionConfig"]

RAMAPURAM = Paper(
    "Theory, Analysis, and Best Practices for Sigmoid Self-Attention", "Ramapuram et al.", 2025, "2409.04431"
)


@dataclasses.dataclass(kw_only=True)
class SigmoidAttentionConfig(DecoderOnlyConfig):
    """Sigmoid self-attention: every weight is ``sigmoid(q·k/sqrt(d) + b)`` on its own, no normalisation over keys."""

    arch: str = field("sigmoid_attention", "Registry name of the architecture this config builds.")
    bias_length: int = field(
        1024, "The sequence length n of the paper's bias b = -log n (the training context length)."
    )
    sigmoid_bias: float | None = field(None, "The logit bias b itself; None means -log(bias_length).")

    def validate(self) -> None:
        """The bias length is a positive number of positions; soft-capping is a softmax option."""
        super().validate()
        self.check_positive("bias_length")
        if self.softcap is not None:
            self.fail("softcap", "applies to softmax attention only (None here)")
        if self.attention_dropout:
            self.fail("attention_dropout", "is not supported by sigmoid attention (0.0 here)")

    @property
    def logit_bias(self) -> float:
        """The resolved bias ``b`` (``sigmoid_bias`` or ``-log(bias_length)``)."""
        return self.sigmoid_bias if self.sigmoid_bias is not None else -math.log(self.bias_length)


SPECS = (
    variant_spec(
        "sigmoid_attention",
        "Sigmoid self-attention: elementwise sigmoid(QK^T/sqrt(d) - log n) weights instead of a row softmax.",
        RAMAPURAM,
        tiny={"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "d_in": 12, "bias_length": 16},
        verification="oracle:Ramapuram et al. 2025 eq. 2 with b = -log n (fp64)",
    ),
)
