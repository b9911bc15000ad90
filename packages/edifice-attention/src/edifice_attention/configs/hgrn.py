"""Config of ``hgrn``: HGRN, the hierarchically gated linear RNN (HGRN-1, torch-free); the model is
:mod:`edifice_attention.hgrn`. The catalogue row cites HGRN2; ``hgrn_v2`` is HGRN2 and this entry is the HGRN paper
that introduced the name (docs/design/hgrn.md)."""

from __future__ import annotations

import dataclasses
import math

from edifice import Converter, Paper, field
from edifice_attention.configs._linear_attention import MixerStackConfig, linear_attention_spec

__all__ = ["CONVERTERS", "SPECS", "HGRNConfig"]

QIN = Paper("Hierarchically Gated Recurrent Neural Network for Sequence Modeling", "Qin et al.", 2023, "2311.04823")


@dataclasses.dataclass(kw_only=True)
class HGRNConfig(MixerStackConfig):
    """HGRN (Qin et al. 2023): elementwise gated linear recurrence with layerwise forget-gate lower bounds."""

    arch: str = field("hgrn", "Registry name of the architecture this config builds.")
    expand_ratio: float = field(1.0, "Width of the recurrence is d_model * expand_ratio (fla's HGRN: 1).")
    use_lower_bound: bool = field(True, "Per-layer lower bound of the forget gate, rising with depth (§3.3).")

    def validate(self) -> None:
        """The recurrence width must be a positive integer."""
        super().validate()
        self.check_positive("expand_ratio")
        width = self.d_model * self.expand_ratio
        if not math.isclose(width, round(width)):
            self.fail("expand_ratio", f"gives d_model * expand_ratio = {width}; must be an integer")

    @property
    def inner_dim(self) -> int:
        """Channels of the recurrence, ``d_model * expand_ratio``."""
        return round(self.d_model * self.expand_ratio)


SPECS = (
    linear_attention_spec(
        "hgrn",
        "edifice_attention.configs.hgrn:HGRNConfig",
        "edifice_attention.hgrn:HGRN",
        "HGRN: elementwise gated linear RNN, input tied to 1 - forget gate, forget gates lower-bounded by depth.",
        QIN,
        tiny={"d_model": 32, "n_layers": 2, "d_ff": 32, "d_in": 12},
        verification="parity:fla.layers.HGRNAttention",
        interop=("fla.models.HGRNForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.HGRNForCausalLM",
        "hgrn",
        "edifice_attention.hgrn:from_fla",
        "flash-linear-attention HGRN checkpoints: input_ids -> logits.",
    ),
)
