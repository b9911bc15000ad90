"""Config of ``efficientnet``: MBConv blocks with squeeze-excitation, scaled by compound scaling (torch-free).

The model is :mod:`edifice_vision.efficientnet`. The defaults are EfficientNet-B0 (Tan & Le 2019, Table 1); B1-B7
are ``width_multiplier``/``depth_multiplier`` of (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8), (1.6, 2.2),
(1.8, 2.6), (2.0, 3.1) at their resolutions (§4, Eq. 3 with phi = 1..7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import image_spec
from edifice_vision.configs._mbconv import MBConvConfig

__all__ = ["B0", "CONVERTERS", "SPECS", "EfficientNetConfig"]

TAN = Paper("EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", "Tan & Le", 2019, "1905.11946")

#: Table 1 of the paper (EfficientNet-B0), stages 2-8: MBConv1 3x3 16, MBConv6 3x3 24 (x2), 5x5 40 (x2),
#: 3x3 80 (x3), 5x5 112 (x3), 5x5 192 (x4), 3x3 320, every block with squeeze-excitation 0.25.
B0 = (
    ("ds_r1_k3_s1_c16_se0.25",),
    ("ir_r2_k3_s2_e6_c24_se0.25",),
    ("ir_r2_k5_s2_e6_c40_se0.25",),
    ("ir_r3_k3_s2_e6_c80_se0.25",),
    ("ir_r3_k5_s1_e6_c112_se0.25",),
    ("ir_r4_k5_s2_e6_c192_se0.25",),
    ("ir_r1_k3_s1_e6_c320_se0.25",),
)


@dataclasses.dataclass(kw_only=True)
class EfficientNetConfig(MBConvConfig):
    """EfficientNet: the B0 table of MBConv blocks (SiLU, SE 0.25), width and depth scaled by the multipliers."""

    arch: str = field("efficientnet", "Registry name of the architecture this config builds.")

    aliases: ClassVar[Mapping[str, str]] = {**MBConvConfig.aliases, "base_dim": "stem_channels"}

    def default_table(self) -> tuple[tuple[str, ...], ...]:
        """EfficientNet-B0 (Table 1)."""
        return B0

    def default_activation(self) -> str:
        """Swish (SiLU), §4."""
        return "silu"


SPECS = (
    image_spec(
        "efficientnet",
        family="convolutional",
        summary="EfficientNet: MBConv blocks with squeeze-excitation, width and depth set by compound scaling.",
        paper=TAN,
        config="edifice_vision.configs.efficientnet:EfficientNetConfig",
        model="edifice_vision.efficientnet:EfficientNet",
        num_features="num_features",
        tiny={
            "width_multiplier": 0.1,
            "depth_multiplier": 0.1,
            "head_channels": 256,
            "num_classes": 10,
            "image_size": 16,
        },
        verification="parity:timm.models.efficientnet.EfficientNet",
        interop=("timm.models.efficientnet.EfficientNet",),
    ),
)

CONVERTERS = (
    Converter(
        "timm.efficientnet",
        "efficientnet",
        "edifice_vision.efficientnet:from_timm",
        "timm EfficientNet checkpoints (efficientnet_b0..b7 with their multipliers; not the tf_* SAME-padded ones).",
    ),
)
