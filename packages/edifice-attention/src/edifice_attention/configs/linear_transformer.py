"""Config of ``linear_transformer``: the linear transformer of Katharopoulos et al. (torch-free); the model is
:mod:`edifice_attention.linear_transformer`."""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_attention.configs._linear_attention import LinearAttentionConfig, linear_attention_spec

__all__ = ["CONVERTERS", "FEATURE_MAPS", "SPECS", "LinearTransformerConfig"]

KATHAROPOULOS = Paper(
    "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
    "Katharopoulos et al.",
    2020,
    "2006.16236",
)

#: Feature maps φ of q and k: the paper's elu(x) + 1 (§3.2.1), and fla's plain alternatives.
FEATURE_MAPS = ("elu_plus_one", "relu", "identity")
#: Activations of the 'mlp' feed-forward.
FFN_ACTIVATIONS = ("relu", "gelu", "silu")
#: Where each block's norms sit: after the residual sum (the authors' fast-transformers) or before the sub-layer.
NORM_POSITIONS = ("post", "pre")


@dataclasses.dataclass(kw_only=True)
class LinearTransformerConfig(LinearAttentionConfig):
    """Linear transformer (Katharopoulos et al. 2020): causal attention with the kernel φ(q)ᵀφ(k), normalised."""

    arch: str = field("linear_transformer", "Registry name of the architecture this config builds.")
    feature_map: str | None = field("elu_plus_one", "Feature map φ of q and k: 'elu_plus_one' (§3.2.1), 'relu'.")
    normalize: bool = field(True, "Divide by the normaliser φ(q_i)ᵀ Σ_j φ(k_j) (eq. 5's denominator).")
    normalizer_eps: float = field(1e-6, "Added to the normaliser (fast-transformers' eps).")
    use_output_gate: bool = field(False, "Multiply the read-out by act(x W_g) (not in the paper).")
    output_norm: str = field("none", "Norm of the read-out: 'none' (the paper), 'rmsnorm' (fla) or 'layernorm'.")
    norm: str = field("layernorm", "Norm of the residual blocks (fast-transformers: LayerNorm).")
    norm_position: str = field("post", "Block norms after the residual sum ('post', fast-transformers) or 'pre'.")
    ffn: str = field("mlp", "Feed-forward kind: 'mlp' (two linears, ffn_activation) or a gated kind.")
    ffn_activation: str = field(
        "relu", "Activation of the 'mlp' feed-forward: 'relu' (fast-transformers), 'gelu', 'silu'."
    )
    norm_eps: float = field(1e-5, "Epsilon of every norm (torch's LayerNorm default, as fast-transformers).")

    def validate(self) -> None:
        """Known feature map, norm position and FFN activation; a positive normaliser epsilon."""
        super().validate()
        self.check_choice("feature_map", FEATURE_MAPS)
        self.check_choice("norm_position", NORM_POSITIONS)
        self.check_choice("ffn_activation", FFN_ACTIVATIONS)
        self.check_positive("normalizer_eps")
        if self.normalize and self.feature_map != "elu_plus_one":
            self.fail("normalize", "needs a positive feature map ('elu_plus_one'): the normaliser could vanish")

    def default_d_ff(self) -> int:
        """4·d_model (fast-transformers' builder: feed_forward_dimensions = 4 · query_dimensions · n_heads)."""
        return 4 * self.d_model


SPECS = (
    linear_attention_spec(
        "linear_transformer",
        "edifice_attention.configs.linear_transformer:LinearTransformerConfig",
        "edifice_attention.linear_transformer:LinearTransformer",
        "Linear transformer: causal attention with the elu+1 kernel and its normaliser, as a constant-size RNN.",
        KATHAROPOULOS,
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 32, "d_in": 12, "chunk_size": 4},
        verification="parity:fla.ops.linear_attn.naive.naive_recurrent_linear_attn",
        interop=("fla.models.LinearAttentionForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.LinearAttentionForCausalLM",
        "linear_transformer",
        "edifice_attention.linear_transformer:from_fla",
        "flash-linear-attention LinearAttention checkpoints (elu, relu or identity feature map): input_ids -> logits.",
    ),
)
