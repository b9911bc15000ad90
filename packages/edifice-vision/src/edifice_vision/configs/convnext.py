"""Config of ``convnext``: the ConvNets of Liu et al. 2022, with ConvNeXt V2's GRN as ``version='v2'`` (torch-free).

The model is :mod:`edifice_vision.convnext`: a 4x4 "patchify" stem, four stages of ConvNeXt blocks (depthwise 7x7,
LayerNorm, inverted-bottleneck MLP with GELU, layer scale) separated by LayerNorm + 2x2 stride-2 convolutions, global
average pooling, a LayerNorm and the classifier. The defaults are ConvNeXt-T (§2.6: C = (96, 192, 384, 768),
B = (3, 3, 9, 3)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["CONVERTERS", "SPECS", "ConvNeXtConfig"]

LIU = Paper("A ConvNet for the 2020s", "Liu, Mao, Wu, Feichtenhofer, Darrell & Xie", 2022, "2201.03545")

#: ``v1``: the 2022 block; ``v2``: Woo et al. 2023 (arXiv:2301.00808) -- Global Response Normalization in the MLP.
VERSIONS = ("v1", "v2")


@dataclasses.dataclass(kw_only=True)
class ConvNeXtConfig(ImageConfig):
    """ConvNeXt: ``depths[i]`` blocks at width ``dims[i]``, a stride-``patch_size`` stem, stride 2 between stages."""

    arch: str = field("convnext", "Registry name of the architecture this config builds.")
    depths: tuple[int, ...] = field((3, 3, 9, 3), "Blocks per stage (§2.2 'stage ratio': ConvNeXt-T is (3, 3, 9, 3)).")
    dims: tuple[int, ...] = field((96, 192, 384, 768), "Channels of each stage.")
    patch_size: int = field(4, "Side and stride of the 'patchify' stem convolution (§2.2).")
    kernel_size: int = field(7, "Side of the depthwise convolution of every block (§2.5: 7x7).")
    mlp_ratio: float = field(4.0, "Hidden width of the inverted bottleneck as a multiple of the stage width (§2.4).")
    version: str = field("v1", "'v1' (Liu et al. 2022) or 'v2' (Global Response Normalization after the GELU).")
    layer_scale_init: float | None = field(
        1e-6, "Initial layer-scale gain of each block (§A.1: 1e-6); None for none (ConvNeXt V2 drops it)."
    )
    head_init_scale: float = field(1.0, "Factor on the classifier's initial weights and biases (authors' code).")
    norm_eps: float = field(1e-6, "Epsilon of every LayerNorm.")

    aliases: ClassVar[Mapping[str, str]] = {
        **ImageConfig.aliases,
        "hidden_sizes": "dims",
        "ls_init_value": "layer_scale_init",
        "layer_scale_init_value": "layer_scale_init",
        "layer_norm_eps": "norm_eps",
    }
    #: Derived sizes the spec's shapes name (``features [B, num_features]``).
    spec_properties: ClassVar[tuple[str, ...]] = ("num_features",)

    @property
    def num_features(self) -> int:
        """Channels of the last stage (the pooled feature size)."""
        return self.dims[-1]

    def validate(self) -> None:
        """One positive depth and width per stage; positive odd kernel; a version from its choices."""
        super().validate()
        self.check_choice("version", VERSIONS)
        self.check_positive("patch_size", "kernel_size", "mlp_ratio", "head_init_scale", "norm_eps")
        if self.kernel_size % 2 == 0:
            self.fail("kernel_size", "must be odd (the depthwise convolution pads kernel_size // 2 on each side)")
        if not self.depths or any(n < 1 for n in self.depths):
            self.fail("depths", "must list at least one stage, each with >= 1 block")
        if len(self.dims) != len(self.depths) or any(d < 1 for d in self.dims):
            self.fail("dims", f"must give one positive width per stage ({len(self.depths)} stages in depths)")
        if self.layer_scale_init is not None and self.layer_scale_init <= 0:
            self.fail("layer_scale_init", "must be > 0, or None for no layer scale")
        if int(self.mlp_ratio * min(self.dims)) < 1:
            self.fail("mlp_ratio", "leaves a hidden width below 1")


SPECS = (
    image_spec(
        "convnext",
        family="vision",
        summary="ConvNeXt: depthwise 7x7 + LayerNorm + inverted-bottleneck MLP blocks with layer scale (V2: + GRN).",
        paper=LIU,
        config="edifice_vision.configs.convnext:ConvNeXtConfig",
        model="edifice_vision.convnext:ConvNeXt",
        num_features="num_features",
        tiny={
            "depths": (1, 1),
            "dims": (8, 16),
            "patch_size": 2,
            "kernel_size": 3,
            "num_classes": 10,
            "image_size": 16,
        },
        verification="parity:timm.models.convnext.ConvNeXt",
        interop=("timm.models.convnext.ConvNeXt",),
    ),
)

CONVERTERS = (
    Converter(
        "timm.convnext",
        "convnext",
        "edifice_vision.convnext:from_timm",
        "timm ConvNeXt and ConvNeXt V2 checkpoints (patch stem, pool-norm-fc head; model or state dict).",
    ),
)
