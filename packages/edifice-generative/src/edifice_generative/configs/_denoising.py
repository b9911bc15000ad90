"""Shared config of the denoising entries (torch-free): the pluggable denoiser network and the tensor specs.

A denoising entry (``diffusion``, ``ddim``, ``flow_matching``, ``rectified_flow``) is a training objective and a
sampler around one network ``f(x_t, t) -> prediction``. The network is chosen by ``denoiser``: ``"mlp"`` for vectors
``[B, channels]`` (a time-embedded residual MLP, edifice_generative.denoisers) or ``"unet"`` for images
``[B, channels, H, W]`` (the ``unet`` block that edifice-vision registers, fetched by name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from edifice import field
from edifice.config import ArchConfig
from edifice.spec import TensorSpec

__all__ = ["DENOISERS", "DenoisingConfig", "denoising_inputs", "denoising_outputs"]

#: The denoiser networks a config may choose.
DENOISERS = ("mlp", "unet")


@dataclasses.dataclass(kw_only=True)
class DenoisingConfig(ArchConfig):
    """The denoiser network of a diffusion or flow entry: a time-embedded MLP for vectors or a U-Net for images."""

    denoiser: str = field("mlp", "The network: 'mlp' (vectors [B, channels]) or 'unet' (images [B, channels, H, W]).")
    channels: int = field(2, "Features of a vector sample (mlp) or channels of an image (unet).")
    hidden_size: int = field(256, "Width of the MLP denoiser, or the U-Net's base_features.")
    n_layers: int = field(3, "Residual layers of the MLP denoiser (unused by the U-Net).")
    channel_mults: tuple[int, ...] = field((1, 2, 2, 2), "U-Net: width of each level as a multiple of hidden_size.")
    layers_per_block: int = field(2, "U-Net: residual blocks per level.")
    attention_levels: tuple[int, ...] = field((1,), "U-Net: levels with self-attention (0 = full resolution).")
    num_heads: int = field(1, "U-Net: attention heads.")
    norm_groups: int = field(32, "U-Net: groups of every GroupNorm.")
    dropout: float = field(0.0, "Dropout inside the denoiser (Ho et al. 2020 CIFAR-10: 0.1).")
    num_classes: int = field(0, "Classes for class conditioning (adds class_labels [B]); 0: unconditional.")
    image_size: int = field(32, "U-Net: side of the square images (a multiple of 2^(levels-1)).")

    aliases: ClassVar[Mapping[str, str]] = {
        "num_layers": "n_layers",
        "action_dim": "channels",
        "in_channels": "channels",
        "base_features": "hidden_size",
        "n_classes": "num_classes",
    }

    def validate(self) -> None:
        """Positive sizes; a known denoiser; for the U-Net, groups divide every width and levels exist."""
        super().validate()
        self.check_choice("denoiser", DENOISERS)
        self.check_positive("channels", "hidden_size", "n_layers", "layers_per_block", "num_heads", "norm_groups")
        self.check_positive("image_size")
        self.check_positive("num_classes", allow_zero=True)
        self.check_range("dropout", 0.0, 1.0)
        if self.dropout == 1.0:
            self.fail("dropout", "must be < 1")
        if self.denoiser != "unet":
            return
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            self.fail("channel_mults", "must list at least one level, each a positive multiple")
        for width in {self.hidden_size * m for m in self.channel_mults}:
            if width % self.norm_groups:
                self.fail("norm_groups", f"must divide every U-Net width (hidden_size x mult), not {width}")
            if self.attention_levels and width % self.num_heads:
                self.fail("num_heads", f"must divide every U-Net width, not {width}")
        if any(not 0 <= lvl < len(self.channel_mults) for lvl in self.attention_levels):
            self.fail("attention_levels", f"must name levels in [0, {len(self.channel_mults)})")
        if self.image_size % (1 << (len(self.channel_mults) - 1)):
            self.fail("image_size", f"must be a multiple of 2^(levels - 1) = {1 << (len(self.channel_mults) - 1)}")


#: An image side: ``image_size`` for the U-Net, dropped for vectors (a conditional dimension must be decided by the
#: config alone, so images are ``image_size`` square rather than any H x W).
_SIDE = "image_size if denoiser == 'unet' else None"


def denoising_inputs(time_domain: str, time_doc: str) -> dict[str, TensorSpec]:
    """The denoiser's inputs: noisy samples ``x``, times ``timestep [B]`` and optional ``class_labels [B]``."""
    return {
        "x": TensorSpec(("B", "channels", _SIDE, _SIDE), doc="Noisy samples x_t (vectors or images)."),
        "timestep": TensorSpec(("B",), domain=time_domain, doc=time_doc),
        "class_labels": TensorSpec(
            ("B",), dtype="int64", domain="int[0, num_classes)", when="num_classes > 0", doc="Class of each sample."
        ),
    }


def denoising_outputs(doc: str) -> dict[str, TensorSpec]:
    """The denoiser's one output, shaped like ``x``."""
    return {"prediction": TensorSpec(("B", "channels", _SIDE, _SIDE), doc=doc)}


#: Tiny configs of the two denoisers (the contract builds each entry with one of them).
TINY_MLP: Mapping[str, Any] = {"denoiser": "mlp", "channels": 3, "hidden_size": 32, "n_layers": 2}
TINY_UNET: Mapping[str, Any] = {
    "denoiser": "unet",
    "channels": 2,
    "hidden_size": 8,
    "channel_mults": (1, 2),
    "n_layers": 1,
    "layers_per_block": 1,
    "attention_levels": (1,),
    "norm_groups": 4,
    "image_size": 16,
}
