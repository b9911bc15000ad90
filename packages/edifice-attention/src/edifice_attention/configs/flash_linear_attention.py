"""Config of ``flash_linear_attention``: flash-linear-attention's ``LinearAttention`` model (torch-free); the model is
:mod:`edifice_attention.flash_linear_attention`."""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_attention.configs._linear_attention import LinearAttentionConfig, linear_attention_spec
from edifice_attention.configs.linear_transformer import FFN_ACTIVATIONS, NORM_POSITIONS, LinearTransformerConfig

__all__ = ["CONVERTERS", "FEATURE_MAPS", "LEARNED_FEATURE_MAPS", "SPECS", "FlashLinearAttentionConfig"]

YANG_FLA = Paper(
    "FLA: A Triton-Based Library for Hardware-Efficient Implementations of Linear Attention Mechanism",
    "Yang & Zhang",
    2024,
    "2410.10989",
)

#: Feature maps φ of fla's ``LinearAttention`` layer. Learned: 'elementwise_product' (fla's default, a Hadamard
#: product of two affine maps), 'hedgehog' (Zhang et al. 2024, softmax over [2Wx+b, -(2Wx+b)]), 't2r' (Kasai et al.
#: 2021, relu(Wx)); parameter-free: 'dpfp' (Schlag et al. 2021), 'elu_plus_one', 'relu', 'identity'.
FEATURE_MAPS = ("elementwise_product", "hedgehog", "t2r", "dpfp", "elu_plus_one", "relu", "identity")
#: The maps with weights (one per q and k unless ``tie_feature_map_qk``).
LEARNED_FEATURE_MAPS = ("elementwise_product", "hedgehog", "t2r")
#: Maps whose features are >= 0, so the normaliser φ(q)ᵀ Σ φ(k) cannot change sign.
_NONNEGATIVE_MAPS = ("hedgehog", "t2r", "dpfp", "elu_plus_one", "relu")


@dataclasses.dataclass(kw_only=True)
class FlashLinearAttentionConfig(LinearTransformerConfig):
    """fla's linear-attention model: undecayed linear attention with a selectable (learned) feature map, pre-norm."""

    arch: str = field("flash_linear_attention", "Registry name of the architecture this config builds.")
    feature_map: str | None = field(
        "elementwise_product",
        "Feature map φ of q and k: 'elementwise_product' (fla's default), 'hedgehog', 't2r', 'dpfp', "
        "'elu_plus_one', 'relu' or 'identity'.",
    )
    tie_feature_map_qk: bool = field(False, "Share one learned feature map between q and k (fla's option).")
    dpfp_nu: int = field(4, "Number of rolls ν of the DPFP map (feature width 2·ν·d_k; fla: 4).")
    normalize: bool = field(False, "Divide by φ(q_i)ᵀ Σ_j φ(k_j) (fla's norm_feature_map; off by default).")
    normalizer_eps: float = field(1e-6, "Added to the normaliser (fla's converter sets 1e-10·sqrt(feature width)).")
    output_norm: str = field("rmsnorm", "Norm of the read-out: 'rmsnorm' per head (fla), 'layernorm' or 'none'.")
    norm: str = field("rmsnorm", "Norm of the residual blocks (fla: RMSNorm).")
    norm_position: str = field("pre", "Block norms before the sub-layer ('pre', fla) or after the sum ('post').")
    ffn: str = field("swiglu", "Feed-forward kind (fla: SwiGLU).")
    norm_eps: float = field(1e-6, "Epsilon of every norm (fla: 1e-6).")

    def validate(self) -> None:
        """Known feature map; the normaliser only with a non-negative map; ties only for learned maps."""
        LinearAttentionConfig.validate(self)
        self.check_choice("feature_map", FEATURE_MAPS)
        self.check_choice("norm_position", NORM_POSITIONS)
        self.check_choice("ffn_activation", FFN_ACTIVATIONS)
        self.check_positive("normalizer_eps", "dpfp_nu")
        if self.normalize and self.feature_map not in _NONNEGATIVE_MAPS:
            self.fail("normalize", f"needs a non-negative feature map ({', '.join(_NONNEGATIVE_MAPS)})")
        if self.tie_feature_map_qk and self.feature_map not in LEARNED_FEATURE_MAPS:
            self.fail("tie_feature_map_qk", f"ties learned maps only ({', '.join(LEARNED_FEATURE_MAPS)})")

    def default_d_ff(self) -> int:
        """The family's default: 8/3·d_model rounded up to 8 (gated), else 4·d_model."""
        return LinearAttentionConfig.default_d_ff(self)


SPECS = (
    linear_attention_spec(
        "flash_linear_attention",
        "edifice_attention.configs.flash_linear_attention:FlashLinearAttentionConfig",
        "edifice_attention.flash_linear_attention:FlashLinearAttention",
        "flash-linear-attention's LinearAttention: undecayed chunked linear attention with a learned feature map.",
        YANG_FLA,
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 32, "d_in": 12, "chunk_size": 4},
        verification="parity:fla.layers.LinearAttention",
        interop=("fla.models.LinearAttentionForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.LinearAttentionForCausalLM/flash_linear_attention",
        "flash_linear_attention",
        "edifice_attention.flash_linear_attention:from_fla",
        "flash-linear-attention LinearAttention checkpoints with any of its feature maps: input_ids -> logits.",
    ),
)
