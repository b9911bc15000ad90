"""Config of ``gsa``: Gated Slot Attention, two-pass gated linear attention over a bounded set of memory slots
(torch-free); the model is :mod:`edifice_attention.gsa`."""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_attention.configs._linear_attention import LinearAttentionConfig, linear_attention_spec

__all__ = ["CONVERTERS", "FEATURE_MAPS", "SPECS", "GSAConfig"]

ZHANG = Paper("Gated Slot Attention for Efficient Linear-Time Sequence Modeling", "Zhang et al.", 2024, "2409.07146")

#: Feature maps of q and k the authors' layer offers (without the learned T2R map).
FEATURE_MAPS = ("silu", "swish", "relu")


@dataclasses.dataclass(kw_only=True)
class GSAConfig(LinearAttentionConfig):
    """GSA (Zhang et al. 2024): gated memories of ``num_slots`` key and value slots per head, read by a softmax."""

    arch: str = field("gsa", "Registry name of the architecture this config builds.")
    num_slots: int = field(64, "Memory slots m per head: rows of the key and value memories K̃, Ṽ ∈ R^{m×d}.")
    gate_logit_normalizer: float = field(8.0, "Temperature τ of the forget gate α = σ(x W_α)^{1/τ} (the paper: 8).")
    feature_map: str | None = field("silu", "Activation of q and k before the first pass (the paper: Swish).")
    use_output_gate: bool = field(False, "GSA has no output gate (the read-out is Swish -> RMSNorm -> W_o).")
    output_norm_per_head: bool = field(False, "One RMSNorm over all heads' read-outs (the authors' layer).")
    query_scale: float = field(1.0, "Scale of q in the first pass's scores K̃_t q_t (the authors' layer: 1).")

    def validate(self) -> None:
        """Positive slots and temperature; a known feature map; no output gate."""
        super().validate()
        self.check_positive("num_slots", "gate_logit_normalizer", "query_scale")
        self.check_choice("feature_map", FEATURE_MAPS)
        if self.use_output_gate:
            self.fail("use_output_gate", "must be False: GSA's read-out is Swish, RMSNorm and W_o, without a gate")


SPECS = (
    linear_attention_spec(
        "gsa",
        "edifice_attention.configs.gsa:GSAConfig",
        "edifice_attention.gsa:GSA",
        "Gated Slot Attention: two passes of gated linear attention over m memory slots with a softmax between.",
        ZHANG,
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "num_slots": 8, "d_ff": 48, "d_in": 12, "chunk_size": 4},
        verification="parity:fla.layers.GatedSlotAttention",
        interop=("fla.models.GSAForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.GSAForCausalLM",
        "gsa",
        "edifice_attention.gsa:from_fla",
        "flash-linear-attention Gated Slot Attention checkpoints: input_ids -> logits.",
    ),
)
