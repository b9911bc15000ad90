"""Config of ``rla`` and ``rdn``: Residual Linear Attention and Residual Delta Net (torch-free); the model is
:mod:`edifice_attention.rla`. Both names build one class; ``variant`` is fixed by the name."""

from __future__ import annotations

import dataclasses
from typing import Any

from edifice import Paper, field
from edifice_attention.configs._linear_attention import LinearAttentionConfig, linear_attention_spec

__all__ = ["SPECS", "VARIANTS", "ResidualLinearAttentionConfig"]

LAI = Paper("Enhancing Linear Attention with Residual Learning", "Lai et al.", 2025, "2509.25223")

#: The base recurrence of both states: gated linear attention (RLA) or the gated delta rule (RDN).
VARIANTS = ("linear", "delta")


@dataclasses.dataclass(kw_only=True)
class ResidualLinearAttentionConfig(LinearAttentionConfig):
    """RLA / RDN (Lai et al. 2025): a gated linear-attention (or delta-rule) state plus an auxiliary state that
    accumulates the clipped prediction residuals and corrects the read-out."""

    arch: str = field("rla", "Registry name of the architecture this config builds.")
    variant: str = field("linear", "Recurrence of both states: 'linear' (RLA) or 'delta' (RDN); fixed by the name.")
    clip_threshold: float = field(1.0, "Residuals are clipped to [-c, c] before they enter the auxiliary state.")
    use_short_conv: bool = field(True, "Causal depthwise convolution + SiLU on q, k and v (Gated DeltaNet's layer).")
    A_init_range: tuple[float, float] = field((1.0, 16.0), "Range of A at init (decay rate; Mamba-2's (1, 16)).")
    dt_min: float = field(0.001, "Smallest Δ of the decay gate's softplus bias at init (Mamba-2).")
    dt_max: float = field(0.1, "Largest Δ of the decay gate's softplus bias at init (Mamba-2).")

    def validate(self) -> None:
        """Known variant; positive clip threshold; a sensible A range and Δ range."""
        super().validate()
        self.check_choice("variant", VARIANTS)
        self.check_positive("clip_threshold", "dt_min", "dt_max")
        low, high = self.A_init_range
        if not 0 < low <= high:
            self.fail("A_init_range", f"must be (low, high) with 0 < low <= high, got {self.A_init_range}")
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must not exceed dt_max={self.dt_max}")


def _spec(name: str, variant: str, summary: str, **extra: Any) -> Any:
    return linear_attention_spec(
        name,
        "edifice_attention.configs.rla:ResidualLinearAttentionConfig",
        "edifice_attention.rla:ResidualLinearAttention",
        summary,
        LAI,
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 32, "d_in": 12, "chunk_size": 4},
        defaults={"variant": variant},
        fixed=("variant",),
        verification="oracle:fp64 token loop of the residual-fitting recurrence (Lai et al. 2025, §3)",
        **extra,
    )


SPECS = (
    _spec(
        "rla",
        "linear",
        "Residual Linear Attention: gated linear attention plus an auxiliary state fitting its clipped residuals.",
    ),
    _spec(
        "rdn",
        "delta",
        "Residual Delta Net: the gated delta rule plus a delta-rule auxiliary state fitting its clipped residuals.",
        alias_of="rla",
    ),
)
