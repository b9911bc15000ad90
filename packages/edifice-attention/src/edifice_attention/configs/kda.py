"""Config of ``kda``: Kimi Delta Attention, the gated delta rule with a decay per key channel (torch-free); the model
is :mod:`edifice_attention.kda`."""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_attention.configs._linear_attention import LinearAttentionConfig, linear_attention_spec

__all__ = ["CONVERTERS", "SPECS", "KDAConfig"]

KIMI = Paper("Kimi Linear: An Expressive, Efficient Attention Architecture", "Kimi Team", 2025, "2510.26692")


@dataclasses.dataclass(kw_only=True)
class KDAConfig(LinearAttentionConfig):
    """Kimi Delta Attention (Kimi Team 2025): ``S_t = (I - β_t k_t k_tᵀ) Diag(α_t) S_{t-1} + β_t k_t v_tᵀ``."""

    arch: str = field("kda", "Registry name of the architecture this config builds.")
    use_short_conv: bool = field(True, "Causal depthwise convolution + SiLU on q, k and v (Kimi Linear: on).")
    output_gate_act: str = field("sigmoid", "Activation of the output gate (Kimi Linear: sigmoid).")
    allow_neg_eigval: bool = field(False, "β = 2σ(x W_β) ∈ (0, 2), so I - β k kᵀ may have negative eigenvalues.")
    gate_rank: int | None = field(
        None, "Rank of the low-rank decay and output-gate projections; None: the value size per head (Kimi Linear)."
    )

    def validate(self) -> None:
        """A positive rank if given; no feature map (q and k are L2-normalised)."""
        super().validate()
        self.check_positive("gate_rank")
        if self.feature_map is not None:
            self.fail("feature_map", "must be None: KDA's q and k are SiLU-activated and L2-normalised")
        if not self.use_output_gate:
            self.fail("use_output_gate", "must be True: KDA's read-out is gated by σ(x W_g↓ W_g↑)")

    @property
    def low_rank(self) -> int:
        """The resolved rank of the decay and output-gate projections."""
        return self.gate_rank if self.gate_rank is not None else self.head_v_dim


SPECS = (
    linear_attention_spec(
        "kda",
        "edifice_attention.configs.kda:KDAConfig",
        "edifice_attention.kda:KDA",
        "Kimi Delta Attention: the gated delta rule with a per-channel decay, chunked WY and recurrent forms.",
        KIMI,
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 48, "d_in": 12, "chunk_size": 4},
        verification="parity:fla.layers.KimiDeltaAttention",
        interop=("fla.models.KDAForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.KDAForCausalLM",
        "kda",
        "edifice_attention.kda:from_fla",
        "flash-linear-attention Kimi Delta Attention checkpoints: input_ids -> logits.",
    ),
)
