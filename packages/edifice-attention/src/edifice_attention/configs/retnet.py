"""Config of ``retnet``: the Retentive Network's multi-scale retention (torch-free); the model is
:mod:`edifice_attention.retnet`."""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_attention.configs._linear_attention import LinearAttentionConfig, linear_attention_spec

__all__ = ["CONVERTERS", "SPECS", "RetNetConfig"]

SUN = Paper("Retentive Network: A Successor to Transformer for Large Language Models", "Sun et al.", 2023, "2307.08621")


@dataclasses.dataclass(kw_only=True)
class RetNetConfig(LinearAttentionConfig):
    """RetNet (Sun et al. 2023): retention with a fixed decay γ per head, rotated q/k, GroupNorm, swish gate."""

    arch: str = field("retnet", "Registry name of the architecture this config builds.")
    expand_k: float = field(1.0, "Query/key width is d_model * expand_k (the paper: d).")
    expand_v: float = field(2.0, "Value width is d_model * expand_v (the paper: 2d, §3.1).")
    output_norm: str = field("layernorm", "Per-head norm of the retention output: 'layernorm' (GroupNorm, eq. 8).")
    norm: str = field("layernorm", "Norm of the residual blocks (LayerNorm in the paper, eq. 9).")
    ffn: str = field("mlp", "Feed-forward kind: 'mlp' (GELU, eq. 9) or a gated kind ('swiglu' in fla's RetNet).")
    rope_base: float = field(10000.0, "Base of the rotation Θ applied to q and k (eq. 3; RoPE's frequencies).")

    def validate(self) -> None:
        """Rotation pairs channels: the key size per head must be even; the feature map is an activation."""
        super().validate()
        self.check_positive("rope_base")
        self.check_activation("feature_map")
        if self.head_k_dim % 2:
            self.fail(
                "expand_k",
                f"gives a key size per head of {self.head_k_dim} (d_model={self.d_model}); it must be even for the "
                "rotation Θ",
            )

    def default_d_ff(self) -> int:
        """2·d_model (§3.1: with V = 2d this gives 12d² parameters a layer, like a transformer's)."""
        return 2 * self.d_model


SPECS = (
    linear_attention_spec(
        "retnet",
        "edifice_attention.configs.retnet:RetNetConfig",
        "edifice_attention.retnet:RetNet",
        "Retentive Network: multi-scale retention (fixed decay per head), chunked, parallel and recurrent forms.",
        SUN,
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 32, "d_in": 12, "chunk_size": 4},
        verification="parity:fla.layers.MultiScaleRetention",
        interop=("fla.models.RetNetForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.RetNetForCausalLM",
        "retnet",
        "edifice_attention.retnet:from_fla",
        "flash-linear-attention RetNet checkpoints (RMSNorm blocks, SwiGLU FFN): input_ids -> logits.",
    ),
)
