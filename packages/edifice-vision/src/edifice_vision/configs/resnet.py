"""Config of ``resnet``: the residual networks of He et al. 2016, with the stem variants of timm (torch-free).

The model is :mod:`edifice_vision.resnet`: a 7x7 stride-2 stem and a 3x3 max pool, then four stages of basic
(ResNet-18/34) or bottleneck (ResNet-50/101/152) residual blocks (Table 1). ``stem_type='deep'`` and ``avg_down``
give the ResNet-C/D tweaks of He et al. 2019 ("Bag of Tricks", arXiv:1812.01187 §4.1) that timm's ``resnet50d``
uses; the defaults are the paper's ResNet-50.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["CONVERTERS", "SPECS", "ResNetConfig"]

HE = Paper("Deep Residual Learning for Image Recognition", "He, Zhang, Ren & Sun", 2016, "1512.03385")

#: Output channels per input channel of each block type (Table 1: a bottleneck's last 1x1 conv widens by 4).
EXPANSION = {"basic": 1, "bottleneck": 4}


@dataclasses.dataclass(kw_only=True)
class ResNetConfig(ImageConfig):
    """ResNet: ``layers[i]`` residual blocks of type ``block`` at width ``channels[i]``, stride 2 between stages."""

    arch: str = field("resnet", "Registry name of the architecture this config builds.")
    block: str = field("bottleneck", "Residual block: 'basic' (two 3x3 convs) or 'bottleneck' (1x1-3x3-1x1, x4).")
    layers: tuple[int, ...] = field((3, 4, 6, 3), "Blocks per stage (Table 1: ResNet-50 is (3, 4, 6, 3)).")
    channels: tuple[int, ...] = field((64, 128, 256, 512), "Inner width of each stage (output: x4 for bottleneck).")
    stem_width: int = field(64, "Output channels of the stem.")
    stem_type: str = field("", "Stem: '' (7x7 conv), 'deep' (three 3x3, ResNet-C) or 'deep_tiered' (timm's 't').")
    avg_down: bool = field(False, "Shortcut downsampling by 2x2 average pool then 1x1 conv (ResNet-D).")
    zero_init_last: bool = field(True, "Zero the last BN scale of every residual branch (Goyal et al. 2017).")
    norm_eps: float = field(1e-5, "BatchNorm epsilon.")

    aliases: ClassVar[Mapping[str, str]] = {
        **ImageConfig.aliases,
        "block_sizes": "layers",
        "block_type": "block",
        "initial_channels": "stem_width",
    }
    #: Derived sizes the spec's shapes name (``features [B, num_features]``).
    spec_properties: ClassVar[tuple[str, ...]] = ("num_features",)

    @property
    def num_features(self) -> int:
        """Channels of the last stage (the pooled feature size)."""
        return self.channels[-1] * EXPANSION[self.block]

    def validate(self) -> None:
        """Block type and stem from their choices; one positive width and depth per stage."""
        super().validate()
        self.check_choice("block", tuple(EXPANSION))
        self.check_choice("stem_type", ("", "deep", "deep_tiered"))
        self.check_positive("stem_width", "norm_eps")
        if not self.layers or any(n < 1 for n in self.layers):
            self.fail("layers", "must list at least one stage, each with >= 1 block")
        if len(self.channels) != len(self.layers):
            self.fail("channels", f"must give one width per stage ({len(self.layers)} stages in layers)")
        if any(c < 1 for c in self.channels):
            self.fail("channels", "must be positive")
        if self.stem_type and self.stem_width % 2:
            self.fail("stem_width", "must be even with a deep stem (its inner convolutions are stem_width / 2 wide)")


SPECS = (
    image_spec(
        "resnet",
        family="convolutional",
        summary="ResNet: basic or bottleneck residual blocks in four stages after a strided stem (ResNet-C/D stems).",
        paper=HE,
        config="edifice_vision.configs.resnet:ResNetConfig",
        model="edifice_vision.resnet:ResNet",
        num_features="num_features",
        tiny={
            "block": "basic",
            "layers": (1, 1, 1, 1),
            "channels": (4, 8, 16, 32),
            "stem_width": 8,
            "num_classes": 10,
            "image_size": 16,
        },
        verification="parity:timm.models.resnet.ResNet",
        interop=("timm.models.resnet.ResNet",),
    ),
)

CONVERTERS = (
    Converter(
        "timm.resnet",
        "resnet",
        "edifice_vision.resnet:from_timm",
        "timm ResNet checkpoints (resnet18/34/50/101/152 and the c/d/s/t stems; model or state dict).",
    ),
)
