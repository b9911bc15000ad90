"""Config of ``lightning_attention``: lightning attention, linear attention with a fixed per-head decay scheduled by
depth, as in MiniMax-01 (torch-free); the model is :mod:`edifice_attention.lightning_attention`."""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._linear_attention import LinearAttentionConfig, linear_attention_spec

__all__ = ["SPECS", "LightningAttentionConfig"]

QIN = Paper(
    "Lightning Attention-2: A Free Lunch for Handling Unlimited Sequence Lengths in Large Language Models",
    "Qin et al.",
    2024,
    "2401.04658",
)


@dataclasses.dataclass(kw_only=True)
class LightningAttentionConfig(LinearAttentionConfig):
    """Lightning attention (Qin et al. 2024; MiniMax-01 2025): SiLU q/k/v, decay λ_h scheduled by depth, gated norm."""

    arch: str = field("lightning_attention", "Registry name of the architecture this config builds.")
    feature_map: str | None = field("silu", "Activation of q, k and v (MiniMax-01: SiLU on the fused qkv projection).")
    output_gate_act: str = field("sigmoid", "Activation of the output gate (MiniMax-01: sigmoid).")
    output_norm_per_head: bool = field(False, "Normalise each head alone (False: one RMSNorm over all heads).")

    def validate(self) -> None:
        """Lightning attention needs a feature map (the activation of q, k and v)."""
        super().validate()
        if self.feature_map is None:
            self.fail("feature_map", "must be an activation name (MiniMax-01: 'silu')")


SPECS = (
    linear_attention_spec(
        "lightning_attention",
        "edifice_attention.configs.lightning_attention:LightningAttentionConfig",
        "edifice_attention.lightning_attention:LightningAttentionModel",
        "Lightning attention (MiniMax-01): linear attention with per-head decays scheduled by depth, sigmoid gate.",
        QIN,
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 32, "d_in": 12, "chunk_size": 4},
        verification="parity:transformers.models.minimax.modeling_minimax.MiniMaxLightningAttention",
    ),
)
