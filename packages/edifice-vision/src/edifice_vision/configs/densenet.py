"""Config of ``densenet``: densely connected convolutional networks (DenseNet-BC), torch-free.

The model is :mod:`edifice_vision.densenet`: a 7x7 stride-2 stem and max pool, then dense blocks in which every layer
sees the concatenation of all earlier feature maps of its block and adds ``growth_rate`` new ones (Huang et al. 2017,
Eq. 2), joined by transition layers that compress the width by ``compression`` and halve the resolution. The
defaults are DenseNet-121 (Table 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["CONVERTERS", "SPECS", "DenseNetConfig"]

HUANG = Paper("Densely Connected Convolutional Networks", "Huang, Liu, van der Maaten & Weinberger", 2017, "1608.06993")


@dataclasses.dataclass(kw_only=True)
class DenseNetConfig(ImageConfig):
    """DenseNet-BC: dense blocks of ``block_config[i]`` bottleneck layers adding ``growth_rate`` maps each."""

    arch: str = field("densenet", "Registry name of the architecture this config builds.")
    growth_rate: int = field(32, "Feature maps each dense layer adds (k in the paper).")
    block_config: tuple[int, ...] = field((6, 12, 24, 16), "Layers per dense block (Table 1: DenseNet-121).")
    bn_size: int = field(4, "Bottleneck width of a dense layer's 1x1 conv, in multiples of growth_rate (4k).")
    compression: float = field(0.5, "Transition compression theta: floor(theta * m) output maps (DenseNet-BC).")
    stem_channels: int | None = field(None, "Output channels of the stem; None: 2 * growth_rate (DenseNet-BC).")
    dense_drop_rate: float = field(0.0, "Dropout on each dense layer's new feature maps.")
    norm_eps: float = field(1e-5, "BatchNorm epsilon.")

    aliases: ClassVar[Mapping[str, str]] = {**ImageConfig.aliases, "initial_channels": "stem_channels"}
    #: Derived sizes the spec's shapes name (``features [B, num_features]``).
    spec_properties: ClassVar[tuple[str, ...]] = ("num_features",)

    @property
    def stem_width(self) -> int:
        """Channels entering the first dense block."""
        return self.stem_channels if self.stem_channels is not None else 2 * self.growth_rate

    def widths(self) -> list[tuple[int, int]]:
        """``(input, output)`` channels of each dense block (a transition between consecutive ones compresses)."""
        out, channels = [], self.stem_width
        for i, n in enumerate(self.block_config):
            if i:
                channels = math.floor(self.compression * channels)
            out.append((channels, channels + n * self.growth_rate))
            channels += n * self.growth_rate
        return out

    @property
    def num_features(self) -> int:
        """Channels of the last dense block (the pooled feature size)."""
        return self.widths()[-1][1]

    def validate(self) -> None:
        """Positive sizes; compression in (0, 1]; at least one block of at least one layer."""
        super().validate()
        self.check_positive("growth_rate", "bn_size", "stem_channels", "norm_eps")
        self.check_range("compression", 0.0, 1.0)
        if self.compression == 0.0:
            self.fail("compression", "must be > 0")
        self.check_range("dense_drop_rate", 0.0, 1.0)
        if not self.block_config or any(n < 1 for n in self.block_config):
            self.fail("block_config", "must list at least one dense block, each with >= 1 layer")
        if any(c_in < 1 for c_in, _ in self.widths()):
            self.fail("compression", "leaves a transition with no output channels")


SPECS = (
    image_spec(
        "densenet",
        family="convolutional",
        summary="DenseNet-BC: each layer of a dense block sees all earlier maps, concatenated; transitions compress.",
        paper=HUANG,
        config="edifice_vision.configs.densenet:DenseNetConfig",
        model="edifice_vision.densenet:DenseNet",
        num_features="num_features",
        tiny={
            "growth_rate": 4,
            "block_config": (2, 2, 2),  # stride 16: the contract's 16x16 images end at 1x1
            "bn_size": 2,
            "num_classes": 10,
            "image_size": 16,
        },
        verification="parity:timm.models.densenet.DenseNet",
        interop=("timm.models.densenet.DenseNet",),
    ),
)

CONVERTERS = (
    Converter(
        "timm.densenet",
        "densenet",
        "edifice_vision.densenet:from_timm",
        "timm DenseNet checkpoints (densenet121/161/169/201; model or state dict).",
    ),
)
