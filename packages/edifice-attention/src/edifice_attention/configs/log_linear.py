"""Config of ``log_linear``: Log-Linear Mamba-2 (torch-free); the model is :mod:`edifice_attention.log_linear`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_attention.configs._linear_attention import MixerStackConfig, linear_attention_spec

__all__ = ["SPECS", "LogLinearConfig"]

GUO = Paper("Log-Linear Attention", "Guo et al.", 2025, "2506.04761")


@dataclasses.dataclass(kw_only=True)
class LogLinearConfig(MixerStackConfig):
    """Log-Linear Mamba-2 (Guo et al. 2025): Mamba-2's scalar-decay attention over a Fenwick-tree partition of the
    prefix, one data-dependent weight λ per level (O(log T) states)."""

    arch: str = field("log_linear", "Registry name of the architecture this config builds.")
    d_ff: int | None = field(0, "Feed-forward hidden size of each block; 0 (Mamba-2 blocks): none.")
    n_heads: int = field(4, "Number of heads; head_dim = d_model * expand / n_heads.")
    expand: int = field(2, "Inner width is d_model * expand (Mamba-2: 2).")
    d_state: int = field(64, "Size of B_t and C_t (the keys and queries), shared by the heads (one group).")
    conv_size: int = field(4, "Kernel size of the causal depthwise convolution on x, B and C.")
    conv_bias: bool = field(True, "Bias in that convolution.")
    use_bias: bool = field(False, "Biases in the input and output projections.")
    num_levels: int = field(15, "Fenwick levels L (λ per level); positions past 2^(L-1) share the top level.")
    chunk_size: int = field(64, "Positions per chunk of the chunked form (a power of two).")
    dt_min: float = field(0.001, "Smallest initial step Δ (log-uniform initialisation of the Δ bias).")
    dt_max: float = field(0.1, "Largest initial step Δ.")
    dt_init_floor: float = field(1e-4, "Floor of the initial Δ.")

    aliases: ClassVar[Mapping[str, str]] = {
        **MixerStackConfig.aliases,
        "num_heads": "n_heads",
        "segment_size": "chunk_size",
        "state_size": "d_state",
    }

    def validate(self) -> None:
        """Widths split over the heads, a power-of-two chunk, at least two levels, ordered Δ range."""
        super().validate()
        self.check_positive("n_heads", "expand", "d_state", "conv_size", "num_levels", "chunk_size")
        self.check_positive("dt_min", "dt_max", "dt_init_floor")
        if (self.d_model * self.expand) % self.n_heads:
            self.fail("n_heads", f"must divide d_model * expand = {self.d_model * self.expand}")
        if self.chunk_size & (self.chunk_size - 1):
            self.fail("chunk_size", "must be a power of two (chunks align with the Fenwick buckets)")
        if self.num_levels < 2:
            self.fail("num_levels", "must be >= 2 (level 0 is the token itself)")
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")

    @property
    def inner_dim(self) -> int:
        """``d_model * expand``: the value width over all heads."""
        return self.d_model * self.expand

    @property
    def head_dim(self) -> int:
        """Value width per head."""
        return self.inner_dim // self.n_heads


SPECS = (
    dataclasses.replace(
        linear_attention_spec(
            "log_linear",
            "edifice_attention.configs.log_linear:LogLinearConfig",
            "edifice_attention.log_linear:LogLinear",
            "Log-Linear Mamba-2: Fenwick-tree buckets of the prefix, O(log T) states, a data-dependent λ per level.",
            GUO,
            tiny={
                "d_model": 16,
                "n_layers": 2,
                "n_heads": 2,
                "d_state": 8,
                "d_in": 12,
                "num_levels": 6,
                "chunk_size": 4,
            },
            verification="oracle:fp64 layer on the masked form O=(QKᵀ⊙M^S⊙M^H)V, eq. 7 (fla naive_log_linear_attn)",
            interop=("fla.layers.LogLinearMamba2",),
        ),
        # The Fenwick buckets are fixed by absolute positions: a left-padded row would be bucketed differently.
        variable_length=False,
    ),
)
