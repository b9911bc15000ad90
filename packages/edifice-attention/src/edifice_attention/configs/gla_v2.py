"""Config of ``gla_v2``: GLA with short convolutions and a long-memory forget-gate init (torch-free); the model is
:mod:`edifice_attention.gla_v2`. ``docs/design/gla_v2.md`` says why this is the catalogue's "GLA v2"."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import field
from edifice_attention.configs._linear_attention import linear_attention_spec
from edifice_attention.configs.gla import SPECS as GLA_SPECS
from edifice_attention.configs.gla import YANG, GLAConfig

__all__ = ["SPECS", "GLAV2Config"]


@dataclasses.dataclass(kw_only=True)
class GLAV2Config(GLAConfig):
    """GLA v2: GLA with causal short convolutions on q, k, v and the forget-gate bias initialised for long memory."""

    arch: str = field("gla_v2", "Registry name of the architecture this config builds.")
    use_short_conv: bool = field(
        True, "Causal depthwise convolution + SiLU on q, k and v (the v2 change; fla's option)."
    )
    head_dim: int | None = field(None, "Query/key size per head; None: d_model * expand_k / n_heads.")
    forget_gate_init: float = field(
        3.0, "Initial bias b_α of the forget gate α = σ(x W_α1 W_α2 + b_α)^{1/τ} (3: α ≈ 0.997 at τ = 16; GLA: 0)."
    )

    aliases: ClassVar[Mapping[str, str]] = {**GLAConfig.aliases, "conv_kernel_size": "conv_size"}

    def validate(self) -> None:
        """A positive head size if given; a finite forget-gate bias."""
        super().validate()
        self.check_positive("head_dim")
        if not -1e4 < self.forget_gate_init < 1e4:
            self.fail("forget_gate_init", "must be a finite gate logit (|b| < 1e4)")

    @property
    def head_k_dim(self) -> int:
        """Query/key size per head: ``head_dim`` if given, else ``d_model * expand_k / n_heads``."""
        return self.head_dim if self.head_dim is not None else super().head_k_dim


SPECS = (
    linear_attention_spec(
        "gla_v2",
        "edifice_attention.configs.gla_v2:GLAV2Config",
        "edifice_attention.gla_v2:GLAV2",
        "GLA v2: gated linear attention with short convolutions on q/k/v and a long-memory forget-gate init.",
        YANG,
        tiny=dict(GLA_SPECS[0].tiny),  # the same layer sizes as gla
        verification="parity:fla.layers.GatedLinearAttention",
        interop=("fla.models.GLAForCausalLM",),
    ),
)
