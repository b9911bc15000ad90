"""Config of ``hgrn_v2``: HGRN-2, the gated linear RNN with state expansion (torch-free); the model is
:mod:`edifice_attention.hgrn_v2`."""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_attention.configs._linear_attention import LinearAttentionConfig, linear_attention_spec

__all__ = ["CONVERTERS", "SPECS", "HGRN2Config"]

QIN = Paper("HGRN2: Gated Linear RNNs with State Expansion", "Qin et al.", 2024, "2404.07904")


@dataclasses.dataclass(kw_only=True)
class HGRN2Config(LinearAttentionConfig):
    """HGRN-2 (Qin et al. 2024): forget gate f with a per-layer lower bound, key 1 - f, outer-product state."""

    arch: str = field("hgrn_v2", "Registry name of the architecture this config builds.")
    n_heads: int = field(2, "Number of heads; each head's state is [d_model/n_heads]² (fla: expand_ratio = d/n_heads).")
    use_lower_bound: bool = field(True, "Per-layer lower bound of the forget gate, rising with depth (HGRN §3.3).")
    use_output_gate: bool = field(False, "Multiply the read-out by act(x W_g) (not in HGRN-2's released layer).")
    output_norm_per_head: bool = field(False, "Normalise each head alone (False: one RMSNorm over all heads, fla).")

    def validate(self) -> None:
        """HGRN-2's gate is its key: no feature map and no short convolution (fla's has no activation after it)."""
        super().validate()
        if self.feature_map is not None:
            self.fail("feature_map", "must be None: HGRN-2's query is SiLU(x W_q) and its key is 1 - f")
        if self.use_short_conv:
            self.fail("use_short_conv", "is not supported by hgrn_v2 (fla's optional convolution has no activation)")
        if self.expand_k != self.expand_v:
            self.fail("expand_k", f"must equal expand_v={self.expand_v}: HGRN-2's heads are square (fla)")


SPECS = (
    linear_attention_spec(
        "hgrn_v2",
        "edifice_attention.configs.hgrn_v2:HGRN2Config",
        "edifice_attention.hgrn_v2:HGRN2",
        "HGRN-2: gated linear RNN with outer-product state expansion, key = 1 - forget gate, layerwise lower bounds.",
        QIN,
        tiny={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 32, "d_in": 12, "chunk_size": 4},
        verification="parity:fla.layers.HGRN2Attention",
        interop=("fla.models.HGRN2ForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.HGRN2ForCausalLM",
        "hgrn_v2",
        "edifice_attention.hgrn_v2:from_fla",
        "flash-linear-attention HGRN2 checkpoints: input_ids -> logits.",
    ),
)
