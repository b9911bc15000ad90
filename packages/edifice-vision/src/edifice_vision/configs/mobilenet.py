"""Config of ``mobilenet``: MobileNetV2 (inverted residuals, linear bottlenecks) and V3 (SE, hard-swish), torch-free.

The model is :mod:`edifice_vision.mobilenet`; ``version`` picks the network: ``"v2"`` is MobileNetV2 (Sandler et
al. 2018, Table 2, ReLU6), ``"v3"`` MobileNetV3-Large (Howard et al. 2019, Table 1: squeeze-excitation with a hard
sigmoid gate in chosen blocks, hard-swish in the later layers, the head convolution after pooling). Both stack the
depthwise-separable convolution of MobileNets (Howard et al. 2017).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import image_spec
from edifice_vision.configs._mbconv import MBConvConfig

__all__ = ["CONVERTERS", "SPECS", "V2", "V3_LARGE", "MobileNetConfig"]

HOWARD = Paper(
    "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
    "Howard et al.",
    2017,
    "1704.04861",
)

#: MobileNetV2, Table 2 (t expansion, c channels, n repeats, s stride): the first bottleneck has t = 1.
V2 = (
    ("ds_r1_k3_s1_c16",),
    ("ir_r2_k3_s2_e6_c24",),
    ("ir_r3_k3_s2_e6_c32",),
    ("ir_r4_k3_s2_e6_c64",),
    ("ir_r3_k3_s1_e6_c96",),
    ("ir_r3_k3_s2_e6_c160",),
    ("ir_r1_k3_s1_e6_c320",),
)
#: MobileNetV3-Large, Table 1 (expansion = exp size / input width; nre: ReLU, else hard-swish), ending in the
#: 1x1 conv to 960 before pooling.
V3_LARGE = (
    ("ds_r1_k3_s1_c16_nre",),
    ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
    ("ir_r3_k5_s2_e3_c40_se0.25_nre",),
    ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
    ("ir_r2_k3_s1_e6_c112_se0.25",),
    ("ir_r3_k5_s2_e6_c160_se0.25",),
    ("cn_r1_k1_s1_c960",),
)


@dataclasses.dataclass(kw_only=True)
class MobileNetConfig(MBConvConfig):
    """MobileNetV2 or V3-Large: the paper's block table scaled by ``width_multiplier`` (alpha)."""

    arch: str = field("mobilenet", "Registry name of the architecture this config builds.")
    version: str = field("v3", "'v2' (MobileNetV2, ReLU6) or 'v3' (MobileNetV3-Large: SE, hard-swish, late head).")

    aliases: ClassVar[Mapping[str, str]] = {**MBConvConfig.aliases}

    def default_table(self) -> tuple[tuple[str, ...], ...]:
        """Table 2 of MobileNetV2 or Table 1 of MobileNetV3."""
        return V2 if self.version == "v2" else V3_LARGE

    def default_activation(self) -> str:
        """ReLU6 (V2) or hard-swish (V3)."""
        return "relu6" if self.version == "v2" else "hard_swish"

    def default_stem(self) -> int:
        """32 (V2) or 16 (V3) stem channels."""
        return 32 if self.version == "v2" else 16

    @property
    def stem_width(self) -> int:
        """V3 keeps its 16-channel stem below alpha = 0.75 (as timm)."""
        if self.version == "v3" and self.width_multiplier < 0.75 and self.stem_channels is None:
            return self.default_stem()
        return super().stem_width

    @property
    def se_act(self) -> str | None:
        """V3's squeeze-excitation uses ReLU inside (§5.3)."""
        return "relu" if self.version == "v3" else None

    @property
    def se_gate(self) -> str:
        """V3 gates with the hard sigmoid ReLU6(x + 3) / 6 (§5.2)."""
        return "hard_sigmoid" if self.version == "v3" else "sigmoid"

    @property
    def se_from_expanded(self) -> bool:
        """V3 squeezes the expanded width to a quarter, rounded to 8 (§5.3)."""
        return self.version == "v3"

    @property
    def head_after_pool(self) -> bool:
        """V3 pools before its 1x1 head convolution (§5.1, Fig. 5)."""
        return self.version == "v3"

    @property
    def head_width(self) -> int:
        """V2: 1280 widened (never narrowed) by alpha; V3: 1280 as given."""
        if self.version == "v3":
            return self.head_channels
        return max(self.head_channels, self.round_channels(self.head_channels))

    def validate(self) -> None:
        """Version from its choices; V3's head convolution needs pooled features."""
        super().validate()
        self.check_choice("version", ("v2", "v3"))
        if self.version == "v3" and not self.global_pool:
            self.fail("global_pool", "must be 'avg' or 'max' for v3 (its head convolution acts on pooled features)")


SPECS = (
    image_spec(
        "mobilenet",
        family="convolutional",
        summary="MobileNetV2/V3: inverted residuals with linear bottlenecks; V3 adds hard-swish and SE (version).",
        paper=HOWARD,
        config="edifice_vision.configs.mobilenet:MobileNetConfig",
        model="edifice_vision.mobilenet:MobileNet",
        num_features="num_features",
        tiny={
            "width_multiplier": 0.1,
            "depth_multiplier": 0.25,
            "head_channels": 64,
            "num_classes": 10,
            "image_size": 16,
        },
        verification="parity:timm.models.mobilenetv3.MobileNetV3",
        interop=("timm.models.mobilenetv3.MobileNetV3", "timm.models.efficientnet.EfficientNet"),
    ),
)

CONVERTERS = (
    Converter(
        "timm.mobilenetv3",
        "mobilenet",
        "edifice_vision.mobilenet:from_timm",
        "timm MobileNetV3-Large checkpoints (mobilenetv3_large_*; model or state dict) -> version='v3'.",
    ),
    Converter(
        "timm.mobilenetv2",
        "mobilenet",
        "edifice_vision.mobilenet:from_timm_v2",
        "timm MobileNetV2 checkpoints (mobilenetv2_*, an EfficientNet in timm; model or state dict) -> version='v2'.",
    ),
)
