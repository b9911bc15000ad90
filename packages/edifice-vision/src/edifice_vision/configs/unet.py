"""Config of ``unet``: the U-Net (Ronneberger et al. 2015) as the diffusion denoiser of Ho et al. 2020 (torch-free).

The model is :mod:`edifice_vision.unet`: an encoder of residual blocks and downsamplings whose features are carried
by skip connections (concatenation) to a mirrored decoder, with a sinusoidal time embedding (and a class embedding)
added inside every residual block, and self-attention at chosen resolutions. The same network is registered as the
block ``unet`` for edifice-generative's denoisers (``requires_blocks=("unet",)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, BlockSpec, Paper, field
from edifice.config import ArchConfig
from edifice.spec import TensorSpec

__all__ = ["BLOCKS", "HO_2020", "RONNEBERGER_2015", "SPECS", "UNetConfig"]

RONNEBERGER_2015 = Paper(
    "U-Net: Convolutional Networks for Biomedical Image Segmentation", "Ronneberger, Fischer & Brox", 2015, "1505.04597"
)
HO_2020 = Paper("Denoising Diffusion Probabilistic Models", "Ho, Jain & Abbeel", 2020, "2006.11239")


@dataclasses.dataclass(kw_only=True)
class UNetConfig(ArchConfig):
    """U-Net denoiser: ``len(channel_mults)`` levels of ``layers_per_block`` residual blocks, time/class conditioned."""

    arch: str = field("unet", "Registry name of the architecture this config builds.")
    in_channels: int = field(3, "Channels of the input image x.")
    out_channels: int | None = field(None, "Channels of the output; None means in_channels (a noise prediction).")
    base_features: int = field(128, "Channels of the first level (DDPM: 128).")
    channel_mults: tuple[int, ...] = field((1, 2, 2, 2), "Width of each level as a multiple of base_features.")
    layers_per_block: int = field(2, "Residual blocks per level in the encoder (the decoder has one more).")
    use_attention: bool = field(True, "Self-attention after the residual blocks of the levels in attention_levels.")
    attention_levels: tuple[int, ...] = field((1,), "Levels (0 = full resolution) with attention (DDPM: 16x16).")
    num_heads: int = field(1, "Attention heads.")
    dropout: float = field(0.1, "Dropout inside residual blocks (DDPM CIFAR-10: 0.1).")
    norm_groups: int = field(32, "Groups of every GroupNorm.")
    num_classes: int = field(0, "Classes for class conditioning (adds class_labels [B]); 0: unconditional.")
    image_size: int = field(32, "Nominal image side (any multiple of 2^(levels-1) works).")

    aliases: ClassVar[Mapping[str, str]] = {"in_chans": "in_channels", "n_classes": "num_classes"}

    @property
    def out_chans(self) -> int:
        """Output channels (``out_channels`` or ``in_channels``)."""
        return self.in_channels if self.out_channels is None else self.out_channels

    spec_properties: ClassVar[tuple[str, ...]] = ("out_chans",)

    def validate(self) -> None:
        """Positive sizes; GroupNorm groups divide every width; attention levels exist and divide into heads."""
        super().validate()
        self.check_positive("in_channels", "out_channels", "base_features", "layers_per_block", "num_heads")
        self.check_positive("norm_groups", "image_size")
        self.check_positive("num_classes", allow_zero=True)
        self.check_range("dropout", 0.0, 1.0)
        if self.dropout == 1.0:
            self.fail("dropout", "must be < 1")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            self.fail("channel_mults", "must list at least one level, each a positive multiple")
        for width in {self.base_features * m for m in self.channel_mults}:
            if width % self.norm_groups:
                self.fail("norm_groups", f"must divide every level's width (base_features x mult), not {width}")
            if self.use_attention and width % self.num_heads:
                self.fail("num_heads", f"must divide every level's width, not {width}")
        if any(not 0 <= lvl < len(self.channel_mults) for lvl in self.attention_levels):
            self.fail("attention_levels", f"must name levels in [0, {len(self.channel_mults)})")
        if self.image_size % (1 << (len(self.channel_mults) - 1)):
            self.fail("image_size", f"must be a multiple of 2^(levels - 1) = {1 << (len(self.channel_mults) - 1)}")


SPECS = (
    ArchSpec(
        name="unet",
        family="vision",
        distribution="edifice-vision",
        summary="U-Net denoiser: residual encoder-decoder, skip concatenation, time and class embeddings, attention.",
        paper=RONNEBERGER_2015,
        config="edifice_vision.configs.unet:UNetConfig",
        model="edifice_vision.unet:UNet",
        inputs={
            "x": TensorSpec(("B", "in_channels", "H", "W"), doc="Images (noisy samples); H, W multiples of 2^(L-1)."),
            "timestep": TensorSpec(("B",), domain="float[0, 1000]", doc="Diffusion time of each sample."),
            "class_labels": TensorSpec(
                ("B",), dtype="int64", domain="int[0, num_classes)", when="num_classes > 0", doc="Class of each sample."
            ),
        },
        outputs={"sample": TensorSpec(("B", "out_chans", "H", "W"), doc="The network's prediction (e.g. the noise).")},
        tiny={
            "in_channels": 2,
            "base_features": 8,
            "channel_mults": (1, 2),
            "layers_per_block": 1,
            "attention_levels": (1,),
            "norm_groups": 4,
            "dropout": 0.0,
            "num_classes": 3,
            "image_size": 16,
        },
        verification="property:skip connections carry the encoder's features past a cut bottleneck; "
        "the time embedding (DDPM sinusoid, fp64 oracle) enters every residual block",
    ),
)

BLOCKS = (
    BlockSpec(
        "unet",
        "edifice_vision.unet:UNet2D",
        "U-Net denoiser body: (x [B, C, H, W], timestep [B], class_labels [B] | None) -> [B, C_out, H, W].",
    ),
)
