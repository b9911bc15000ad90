"""Config of ``retnet_v2``: YOCO's gated retention, RetNet with a data-dependent decay (torch-free); the model is
:mod:`edifice_attention.retnet_v2`. ``docs/design/retnet_v2.md`` says why this is the catalogue's "RetNet v2"."""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._linear_attention import linear_attention_spec
from edifice_attention.configs.retnet import RetNetConfig

__all__ = ["SPECS", "RetNetV2Config"]

YOCO = Paper("You Only Cache Once: Decoder-Decoder Architectures for Language Models", "Sun et al.", 2024, "2405.05254")


@dataclasses.dataclass(kw_only=True)
class RetNetV2Config(RetNetConfig):
    """Gated retention (YOCO): RetNet's retention with a data-dependent scalar decay γ_t per head and step."""

    arch: str = field("retnet_v2", "Registry name of the architecture this config builds.")
    expand_k: float = field(1.0, "Query/key width is d_model * expand_k (YOCO: d).")
    expand_v: float = field(1.0, "Value width is d_model * expand_v (YOCO: d).")
    output_norm: str = field("rmsnorm", "Per-head norm of the retention output (YOCO's code: RMSNorm).")
    output_norm_affine: bool = field(False, "Learned gain in the per-head output norm (YOCO's code: none).")
    norm: str = field("rmsnorm", "Norm of the residual blocks (YOCO: RMSNorm).")
    ffn: str = field("swiglu", "Feed-forward kind (YOCO: SwiGLU).")
    gate_logit_normalizer: float = field(16.0, "Temperature τ of γ_t = σ(x_t W_γ)^{1/τ} (YOCO: 16).")

    def validate(self) -> None:
        """A positive temperature; a per-head norm (a gain-free joint norm would not be YOCO's)."""
        super().validate()
        self.check_positive("gate_logit_normalizer")

    def default_d_ff(self) -> int:
        """The family's gated default, 8/3·d_model rounded up to 8 (YOCO's SwiGLU), not RetNet's 2·d_model."""
        return super(RetNetConfig, self).default_d_ff()


SPECS = (
    linear_attention_spec(
        "retnet_v2",
        "edifice_attention.configs.retnet_v2:RetNetV2Config",
        "edifice_attention.retnet_v2:RetNetV2",
        "Gated retention (YOCO): RetNet with a data-dependent decay per head, chunked, parallel and recurrent forms.",
        YOCO,
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 32, "d_in": 12, "chunk_size": 4},
        verification="parity:fla.layers.YOCOGatedRetention",
        interop=("fla.layers.YOCOGatedRetention",),
    ),
)
