"""Config of ``nha``: Native Hybrid Attention (torch-free); the model is :mod:`edifice_attention.nha`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_attention.configs._linear_attention import MixerStackConfig, linear_attention_spec

__all__ = ["SPECS", "NHAConfig"]

DU = Paper("Native Hybrid Attention for Efficient Sequence Modeling", "Du et al.", 2025, "2510.07019")


@dataclasses.dataclass(kw_only=True)
class NHAConfig(MixerStackConfig):
    """NHA (Du et al. 2025): one softmax over m gated long-term key/value slots and a window of recent tokens."""

    arch: str = field("nha", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Number of heads; head_dim = d_model / n_heads.")
    num_slots: int = field(64, "Long-term key/value slots m per head (0: sliding-window attention only).")
    window_size: int = field(64, "Short-term window w: a query sees its last w tokens exactly (0: slots only).")
    gate_logit_normalizer: float = field(8.0, "Temperature τ of the slot forget gate α = σ(x W_α + b)^{1/τ} (GSA: 8).")
    gate_init: float = field(0.0, "Initial bias b of the slot-gate logits (larger: slots forget more slowly).")

    aliases: ClassVar[Mapping[str, str]] = {**MixerStackConfig.aliases, "num_heads": "n_heads"}

    def validate(self) -> None:
        """Heads divide d_model; non-negative slots and window, not both zero; positive temperature."""
        super().validate()
        self.check_positive("n_heads", "gate_logit_normalizer")
        self.check_positive("num_slots", "window_size", allow_zero=True)
        if self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model}")
        if self.num_slots == 0 and self.window_size == 0:
            self.fail("window_size", "must be > 0 when num_slots=0 (a query would see nothing)")

    @property
    def head_dim(self) -> int:
        """``d_model / n_heads``."""
        return self.d_model // self.n_heads


SPECS = (
    linear_attention_spec(
        "nha",
        "edifice_attention.configs.nha:NHAConfig",
        "edifice_attention.nha:NHA",
        "Native Hybrid Attention: gated long-term slots and a sliding window of tokens share one softmax.",
        DU,
        tiny={"d_model": 16, "n_layers": 2, "n_heads": 2, "d_in": 12, "num_slots": 4, "window_size": 3, "d_ff": 24},
        verification="oracle:fp64 token loop of NHA's single softmax over [GSA slots of evicted tokens; window]",
    ),
)
