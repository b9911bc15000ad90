"""Config of ``laser``: LASER attention, ``log(softmax(QK^T/sqrt(d)) exp(V))`` (torch-free).

The model is :mod:`edifice_attention.laser`: the ``decoder_only`` stack whose attention runs on exponentiated values
and takes the log (Duvvuri & Dhillon, ICML 2025).
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "LaserConfig"]

DUVVURI = Paper("LASER: Attention with Exponential Transformation", "Duvvuri & Dhillon", 2025, "2411.03493")


@dataclasses.dataclass(kw_only=True)
class LaserConfig(DecoderOnlyConfig):
    """LASER: ``O = log(softmax(QK^T/sqrt(d)) exp(V))`` with the log-sum-exp max shift over the values."""

    arch: str = field("laser", "Registry name of the architecture this config builds.")

    def validate(self) -> None:
        """Attention dropout is not part of LASER (the weights feed a log)."""
        super().validate()
        if self.attention_dropout:
            self.fail("attention_dropout", "is not supported by LASER attention (0.0 here)")


SPECS = (
    variant_spec(
        "laser",
        "LASER: softmax attention on exp(V), then log (log-sum-exp with a max shift): larger attention gradients.",
        DUVVURI,
        tiny={"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "vocab_size": 64},
        verification="oracle:Duvvuri & Dhillon 2025 eq. 4-5 (fp64 log-sum-exp of log A + V)",
    ),
)
