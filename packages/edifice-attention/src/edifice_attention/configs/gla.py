"""Config of ``gla``: Gated Linear Attention (torch-free); the model is :mod:`edifice_attention.gla`."""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_attention.configs._linear_attention import LinearAttentionConfig, linear_attention_spec

__all__ = ["CONVERTERS", "SPECS", "GLAConfig"]

YANG = Paper("Gated Linear Attention Transformers with Hardware-Efficient Training", "Yang et al.", 2023, "2312.06635")


@dataclasses.dataclass(kw_only=True)
class GLAConfig(LinearAttentionConfig):
    """GLA (Yang et al. 2023): linear attention whose state decays per key channel by a low-rank data-dependent gate."""

    arch: str = field("gla", "Registry name of the architecture this config builds.")
    expand_k: float = field(0.5, "Query/key width is d_model * expand_k (the paper: d/2, §4.4).")
    expand_v: float = field(1.0, "Value width is d_model * expand_v (the paper: d).")
    gate_low_rank_dim: int = field(16, "Rank of the decay projection x W_α1 W_α2 (§4.4: 16).")
    gate_logit_normalizer: float = field(16.0, "Temperature τ of α = σ(x W_α1 W_α2 + b_α)^{1/τ} (§4.4: 16).")
    clamp_min: float | None = field(None, "Lower bound on the log-decay log α (fla's clamp_min), or None.")

    def validate(self) -> None:
        """Positive rank and temperature; a clamp must be negative."""
        super().validate()
        self.check_positive("gate_low_rank_dim", "gate_logit_normalizer")
        if self.clamp_min is not None and not self.clamp_min < 0:
            self.fail("clamp_min", "must be negative (a log-decay bound) or None")


SPECS = (
    linear_attention_spec(
        "gla",
        "edifice_attention.configs.gla:GLAConfig",
        "edifice_attention.gla:GLA",
        "Gated Linear Attention: a data-dependent decay per key channel, chunked with secondary-level chunking.",
        YANG,
        tiny={
            "d_model": 32,
            "n_layers": 1,
            "n_heads": 2,
            "d_ff": 48,
            "d_in": 12,
            "gate_low_rank_dim": 4,
            "chunk_size": 4,
        },
        verification="parity:fla.layers.GatedLinearAttention",
        interop=("fla.models.GLAForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.GLAForCausalLM",
        "gla",
        "edifice_attention.gla:from_fla",
        "flash-linear-attention GLA checkpoints: input_ids -> logits.",
    ),
)
