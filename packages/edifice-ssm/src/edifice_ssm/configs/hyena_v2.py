"""Config and spec of ``hyena_v2``: StripedHyena 2, the convolutional multi-hybrid of Evo 2 (torch-free).

The model is :mod:`edifice_ssm.hyena_v2`; why this entry is StripedHyena 2 is written down in
``docs/design/hyena_v2.md``. Layers follow ``layer_pattern`` (cycled): ``"se"`` (Hyena with short explicit filters),
``"mr"`` (medium regularized explicit filters), ``"li"`` (long implicit real-modal filters) and ``"attn"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.striped_hyena import StripedBlockConfig

__all__ = ["LAYER_KINDS", "SPECS", "HyenaV2Config"]

#: The operators of StripedHyena 2 a layer can be.
LAYER_KINDS = ("se", "mr", "li", "attn")


@dataclasses.dataclass(kw_only=True)
class HyenaV2Config(StripedBlockConfig):
    """StripedHyena 2: Hyena-SE, Hyena-MR and Hyena-LI blocks striped with attention, each with a gated MLP."""

    arch: str = field("hyena_v2", "Registry name of the architecture this config builds.")
    layer_pattern: tuple[str, ...] = field(
        ("se", "mr", "li", "attn", "se", "mr", "li"),
        "Operator of each layer, cycled: 'se', 'mr', 'li' or 'attn' (default: Evo 2's SE-MR-LI-MHA-SE-MR-LI).",
    )
    striped: bool = field(True, "Stripe attention in as layer_pattern says; False drops its 'attn' entries.")
    se_filter_length: int = field(7, "Taps of Hyena-SE's short explicit filters.")
    mr_filter_length: int = field(128, "Taps of Hyena-MR's medium explicit filters.")
    filter_groups: int | None = field(
        None, "Distinct SE/MR filters, each shared by d_model / filter_groups channels; None: d_model (Evo 2: D/16)."
    )
    mr_decay_min: float = field(0.0, "log10 of the slowest Hyena-MR decay rate r (h_t = ĥ_t exp(-r t/(L-1))).")
    mr_decay_max: float = field(2.0, "log10 of the fastest Hyena-MR decay rate r.")
    mr_init_scale: float = field(1e-5, "Hyena-MR's free taps start at mr_init_scale * N(0, 1) / sqrt(L).")
    d_state: int = field(16, "Real modes per channel of Hyena-LI's filter h_t = Σ_n R_n λ_n^t.")
    li_gamma_min: float = field(0.01, "Hyena-LI init: exp(γ) ~ U(li_gamma_min, li_gamma_max), λ = exp(-e^(p+γ)).")
    li_gamma_max: float = field(0.1, "Upper end of Hyena-LI's initial exp(γ) range.")
    rope_base: float = field(1e6, "RoPE base of the attention layers (the Vortex code's default).")
    attn_bias: bool = field(True, "Biases on the attention projections.")
    short_filter_bias: bool = field(False, "Bias on the featurizer FIR (Evo 2 has none).")
    activation: str = field("gelu", "Activation of the gated MLPs (Evo 2's mlp_activation).")

    aliases: ClassVar[Mapping[str, str]] = {
        **StripedBlockConfig.aliases,
        "state_size": "d_state",
        "filter_size": "mr_filter_length",
    }

    def validate(self) -> None:
        """Check the pattern, the filter sizes and groups, and the initialisation ranges."""
        super().validate()
        self.check_positive("se_filter_length", "mr_filter_length", "filter_groups", "d_state", "mr_init_scale")
        self.check_positive("li_gamma_min", "li_gamma_max")
        self.check_activation("activation")
        if not self.layer_pattern:
            self.fail("layer_pattern", f"must name at least one operator of {', '.join(LAYER_KINDS)}")
        for kind in self.layer_pattern:
            if kind not in LAYER_KINDS:
                self.fail("layer_pattern", f"entries must be one of {', '.join(repr(k) for k in LAYER_KINDS)}")
        if not self.pattern:
            self.fail("striped", "is False but layer_pattern has only attention layers: nothing would be left")
        self.check_divides("filter_groups", "d_model")
        if self.mr_decay_min > self.mr_decay_max:
            self.fail("mr_decay_min", f"must be <= mr_decay_max={self.mr_decay_max}")
        if self.li_gamma_min > self.li_gamma_max:
            self.fail("li_gamma_min", f"must be <= li_gamma_max={self.li_gamma_max}")

    @property
    def pattern(self) -> tuple[str, ...]:
        """The cycle of operators actually used (without ``'attn'`` when not ``striped``)."""
        return self.layer_pattern if self.striped else tuple(k for k in self.layer_pattern if k != "attn")

    @property
    def has_attention(self) -> bool:
        """Whether any layer is attention."""
        return "attn" in self.pattern[: self.n_layers]

    def layer_kind(self, index: int) -> str:
        """The operator of layer ``index``."""
        return self.pattern[index % len(self.pattern)]

    @property
    def groups(self) -> int:
        """The resolved number of SE/MR filters (``filter_groups`` or ``d_model``)."""
        return self.filter_groups if self.filter_groups is not None else self.d_model


SPECS = (
    ArchSpec(
        name="hyena_v2",
        family="ssm",
        distribution="edifice-ssm",
        summary="StripedHyena 2 (Evo 2): Hyena-SE/MR/LI convolutions (short, decayed medium, real-modal long) + MHA.",
        paper=Paper(
            title="Systems and Algorithms for Convolutional Multi-Hybrid Language Models at Scale",
            authors="Jerome Ku, Eric Nguyen, David W. Romero, Garyk Brixi, Brandon Yang, Anton Vorontsov, "
            "Ali Taghibakhshi, Amy X. Lu, Dave P. Burke, Greg Brockman, Stefano Massaroli, Christopher Ré, "
            "Patrick D. Hsu, Brian L. Hie, Stefano Ermon, Michael Poli",
            year=2025,
            arxiv="2503.01868",
        ),
        config="edifice_ssm.configs.hyena_v2:HyenaV2Config",
        model="edifice_ssm.hyena_v2:HyenaV2",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "d_in": 6,
            "layer_pattern": ("mr", "li"),
            "mr_filter_length": 6,
            "se_filter_length": 3,
            "d_state": 4,
            "n_heads": 2,
            "d_ff": 32,
        },
        verification="oracle:docs/design/hyena_v2.md -- Hyena-SE/MR as explicit FIR sums, Hyena-LI as its real modal "
        "recurrence, fp64 (arXiv:2503.01868)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
