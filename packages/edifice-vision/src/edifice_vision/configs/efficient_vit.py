"""Config of ``efficient_vit``: EfficientViT of Liu et al. (CVPR 2023), cascaded group attention (torch-free).

The model is :mod:`edifice_vision.efficient_vit` (Liu, Peng, Zheng, Yang, Hu & Yuan, "EfficientViT: Memory Efficient
Vision Transformer with Cascaded Group Attention", arXiv:2305.07027; timm's ``efficientvit_m0..m5``). The catalogue
row names arXiv:2205.14756, which is the *other* EfficientViT (Cai et al., multi-scale linear attention, timm's
``efficientvit_mit``); its authors and year, and the entry's options (``embed_dim``, ``num_heads``, ``depths``), are
those of Liu et al., which this entry implements (see ``docs/design/efficient_vit.md``). The defaults are
EfficientViT-M0 (Table 1 of the paper).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["CONVERTERS", "SPECS", "EfficientViTConfig"]

LIU = Paper(
    "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention",
    "Liu, Peng, Zheng, Yang, Hu & Yuan",
    2023,
    "2305.07027",
)


def se_width(channels: int) -> int:
    """Squeeze-excitation width of the patch merging: ``channels / 4`` rounded to a multiple of 8 (at least 8)."""
    return max(8, int(channels * 0.25 + 4) // 8 * 8)


@dataclasses.dataclass(kw_only=True)
class EfficientViTConfig(ImageConfig):
    """EfficientViT: an overlapping conv stem, then stages of sandwich blocks around cascaded group attention."""

    arch: str = field("efficient_vit", "Registry name of the architecture this config builds.")
    embed_dim: tuple[int, ...] = field((64, 128, 192), "Width of each stage (M0: 64, 128, 192).")
    depths: tuple[int, ...] = field((1, 2, 3), "Sandwich blocks per stage (M0: 1, 2, 3).")
    num_heads: tuple[int, ...] = field((4, 4, 4), "Attention heads per stage (each head sees width / heads channels).")
    key_dim: tuple[int, ...] = field(
        (16, 16, 16), "Query/key size of each stage's heads (the value size is width / heads)."
    )
    window_size: tuple[int, ...] = field((7, 7, 7), "Side of the local attention windows of each stage.")
    kernels: tuple[int, ...] = field((5, 5, 5, 5), "Depthwise kernel on the queries of head i (one per head).")
    patch_size: int = field(16, "Stride of the stem: log2(patch_size) stride-2 3x3 convolutions (a power of 2).")
    mlp_ratio: float = field(2.0, "Hidden width of the feed-forward layers as a multiple of the stage width.")
    norm_eps: float = field(1e-5, "BatchNorm epsilon.")

    aliases: ClassVar[Mapping[str, str]] = {
        **ImageConfig.aliases,
        "depth": "depths",
        "embed_dims": "embed_dim",
        "hidden_sizes": "embed_dim",
        "window_sizes": "window_size",
    }
    #: Derived sizes the spec's shapes name (``features [B, num_features]``).
    spec_properties: ClassVar[tuple[str, ...]] = ("num_features",)
    #: Pooling before the BatchNorm-linear head (timm: avg; a classifier needs pooled features).
    pool_choices: ClassVar[tuple[str, ...]] = ("avg", "max")

    @property
    def num_features(self) -> int:
        """Width of the last stage (the pooled feature size)."""
        return self.embed_dim[-1]

    def resolutions(self, size: int) -> list[int]:
        """The side of each stage's map for a ``size x size`` image (the stem's stride, then /2 per later stage)."""
        side = size // self.patch_size
        sides = [side]
        for _ in self.embed_dim[1:]:
            side = (side - 1) // 2 + 1
            sides.append(side)
        return sides

    def validate(self) -> None:
        """One depth, width, head count, key size and window per stage; heads divide widths; a power-of-2 stem."""
        super().validate()
        n = len(self.embed_dim)
        if n < 1 or any(d < 1 for d in self.embed_dim):
            self.fail("embed_dim", "must list at least one positive stage width")
        for name in ("depths", "num_heads", "key_dim", "window_size"):
            values = getattr(self, name)
            if len(values) != n or any(v < 1 for v in values):
                self.fail(name, f"must give one positive value per stage ({n} stages in embed_dim)")
        for i, (dim, heads) in enumerate(zip(self.embed_dim, self.num_heads, strict=True)):
            if dim % heads:
                self.fail("num_heads", f"{heads} heads do not divide stage {i}'s width {dim}")
        if len(self.kernels) < max(self.num_heads) or any(k < 1 or k % 2 == 0 for k in self.kernels):
            self.fail("kernels", f"must give an odd kernel for each of the {max(self.num_heads)} heads")
        p = self.patch_size
        if p < 2 or p & (p - 1):
            self.fail("patch_size", f"must be a power of 2 >= 2, got {p}")
        if self.embed_dim[0] % (p // 2):
            self.fail("embed_dim", f"the stem halves the width per stride-2 conv: embed_dim[0] must divide by {p // 2}")
        self.check_positive("mlp_ratio", "norm_eps")
        if self.image_size < p:
            self.fail("image_size", f"must be at least patch_size={p}")


#: Tiny EfficientViT: 16x16 images, a one-conv stride-2 stem, two one-block stages (with a patch merging between)
#: on 8x8 and 4x4 maps in 3x3 windows, so both split into padded windows; two cascaded heads per stage.
TINY = {
    "image_size": 16,
    "patch_size": 2,
    "embed_dim": (8, 16),
    "depths": (1, 1),
    "num_heads": (2, 2),
    "key_dim": (4, 4),
    "window_size": (3, 3),
    "kernels": (3, 3),
    "num_classes": 10,
}

SPECS = (
    image_spec(
        "efficient_vit",
        family="vision",
        summary="EfficientViT (MSRA): sandwich blocks (DWConv-FFN, cascaded group attention, DWConv-FFN) in windows.",
        paper=LIU,
        config="edifice_vision.configs.efficient_vit:EfficientViTConfig",
        model="edifice_vision.efficient_vit:EfficientViT",
        num_features="num_features",
        tiny=TINY,
        verification="parity:timm.models.efficientvit_msra.EfficientVitMsra",
        interop=("timm.models.efficientvit_msra.EfficientVitMsra",),
    ),
)

CONVERTERS = (
    Converter(
        "timm.efficientvit_msra",
        "efficient_vit",
        "edifice_vision.efficient_vit:from_timm",
        "timm EfficientViT (MSRA) checkpoints (efficientvit_m0..m5; model or state dict).",
    ),
)
