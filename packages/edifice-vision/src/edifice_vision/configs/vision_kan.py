"""Config of ``vision_kan``: Vision KAN (ViK), an attention-free hierarchical backbone whose token mixer is a KAN.

The model is :mod:`edifice_vision.vision_kan` (Yang et al. 2026): a MetaFormer of four stages whose token mixer,
MultiPatch-KAN, applies a Kolmogorov-Arnold layer to the pixels of every ``kan_patch_size²`` window of each channel,
then mixes along the two axes and through a low-rank map over all positions. The defaults are ViK-S (``vik_small``
of the authors' code: depths (2, 2, 6, 2), channels (64, 128, 320, 512), 224x224 images). The KAN's edge functions
are B-splines (Liu et al. 2024, the issue's choice) or, with ``basis='rbf'``, the paper's Gaussian RBFs.

The low-rank global map is ``[H W -> global_rank -> H W]`` in every stage: a model reads images of ``image_size``
only (another size raises a ``ValueError`` naming the expected one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["SPECS", "VisionKANConfig"]

YANG = Paper(
    "Vision KAN: Towards an Attention-Free Backbone for Vision with Kolmogorov-Arnold Networks",
    "Yang, Zhang, Luo, Wu, Lu & Shen",
    2026,
    "2601.21541",
)


@dataclasses.dataclass(kw_only=True)
class VisionKANConfig(ImageConfig):
    """ViK: a stride-``patch_size`` stem, then ``depths[i]`` MultiPatch-KAN blocks of width ``channels[i]`` a stage."""

    arch: str = field("vision_kan", "Registry name of the architecture this config builds.")
    image_size: int = field(224, "Side of the images: fixes the positions the low-rank global map is sized for.")
    channels: tuple[int, ...] = field((64, 128, 320, 512), "Channels of each stage (ViK-S).")
    depths: tuple[int, ...] = field((2, 2, 6, 2), "Blocks per stage (ViK-S; ViK-B is (4, 4, 12, 4)).")
    patch_size: int = field(4, "Stride of the stem convolution (kernel 2p - 1, padding p // 2: the authors' 7/4/2).")
    kan_patch_size: int = field(7, "Side of the windows whose pixels one KAN layer maps (ps² inputs and outputs).")
    basis: str = field("bspline", "Basis of the KAN's edge functions: 'bspline' (Liu et al.) or 'rbf' (the paper's).")
    grid_size: int = field(8, "Grid intervals of the B-splines, or Gaussian centres of the RBFs.")
    spline_order: int = field(3, "Order k of the B-splines (cubic); unused by 'rbf'.")
    grid_range: tuple[float, float] = field((-2.0, 2.0), "Range of the KAN's grid (the authors' RBF range).")
    dw_kernel_size: int = field(3, "Length of the axis-wise depthwise convolutions (k x 1 and 1 x k).")
    global_rank: int = field(64, "Rank of the low-rank global map over the H*W positions (at most H*W).")
    mlp_ratio: float = field(4.0, "Hidden width of each block's MLP as a multiple of the stage width.")
    layer_scale: float = field(1e-5, "Initial LayerScale gain of both residual branches.")
    norm_eps: float = field(1e-5, "Epsilon of the one-group GroupNorms.")
    proj_drop_rate: float = field(0.0, "Dropout inside and after each block's MLP.")

    aliases: ClassVar[Mapping[str, str]] = {
        **ImageConfig.aliases,
        "embed_dims": "channels",
        "dims": "channels",
        "layers": "depths",
        "num_rbf_centers": "grid_size",
        "num_grids": "grid_size",
        "ffn_expansion": "mlp_ratio",
        "layer_scale_init_value": "layer_scale",
    }
    pool_choices: ClassVar[tuple[str, ...]] = ("avg", "max", "")
    spec_properties: ClassVar[tuple[str, ...]] = ("num_features",)

    @property
    def num_features(self) -> int:
        """Channels of the last stage (the pooled feature size)."""
        return self.channels[-1]

    def stage_sides(self) -> list[int]:
        """Side of each stage's feature map: ``image_size / patch_size``, halved before every later stage."""
        return [self.image_size // self.patch_size // 2**i for i in range(len(self.depths))]

    def validate(self) -> None:
        """One width and depth per stage; every stage's map a whole number of KAN windows; sizes positive."""
        super().validate()
        self.check_positive(
            "patch_size", "kan_patch_size", "grid_size", "dw_kernel_size", "global_rank", "mlp_ratio", "norm_eps"
        )
        self.check_positive("spline_order", allow_zero=True)
        self.check_choice("basis", ("bspline", "rbf"))
        if not self.depths or len(self.depths) != len(self.channels):
            self.fail("depths", f"needs one entry per stage of channels={self.channels}, got {self.depths}")
        if any(d < 1 for d in self.depths) or any(c < 1 for c in self.channels):
            self.fail("channels", f"depths and channels must be positive, got {self.depths} and {self.channels}")
        if not self.grid_range[0] < self.grid_range[1]:
            self.fail("grid_range", f"must be (low, high) with low < high, got {self.grid_range}")
        if self.basis == "rbf" and self.grid_size < 2:
            self.fail("grid_size", "'rbf' needs at least 2 centres")
        if self.dw_kernel_size % 2 == 0:
            self.fail("dw_kernel_size", f"must be odd (same-size output), got {self.dw_kernel_size}")
        stride = self.patch_size * 2 ** (len(self.depths) - 1)
        if self.image_size % stride:
            self.fail("image_size", f"{self.image_size} is not a multiple of patch_size * 2^(stages - 1) = {stride}")
        for i, side in enumerate(self.stage_sides()):
            if side % self.kan_patch_size:
                self.fail(
                    "kan_patch_size",
                    f"stage {i} has a {side}x{side} map, not a whole number of {self.kan_patch_size}x"
                    f"{self.kan_patch_size} windows",
                )
        self.check_positive("layer_scale", allow_zero=True)
        self.check_range("proj_drop_rate", 0.0, 1.0)
        if self.proj_drop_rate == 1.0:
            self.fail("proj_drop_rate", "must be < 1")


#: A tiny ViK: 16x16 images, stem stride 2, two stages (8x8 then 4x4 maps) of one block, 2x2 KAN windows.
TINY = {
    "image_size": 16,
    "patch_size": 2,
    "channels": (8, 16),
    "depths": (1, 1),
    "kan_patch_size": 2,
    "grid_size": 3,
    "global_rank": 8,
    "mlp_ratio": 2.0,
    "num_classes": 10,
}

SPECS = (
    image_spec(
        "vision_kan",
        family="vision",
        summary="Vision KAN: MetaFormer stages whose token mixer is a windowed KAN (B-splines or RBFs), axis and "
        "low-rank global mixing.",
        paper=YANG,
        config="edifice_vision.configs.vision_kan:VisionKANConfig",
        model="edifice_vision.vision_kan:VisionKAN",
        num_features="num_features",
        tiny=TINY,
        verification="oracle:fp64 Cox-de Boor B-splines and KAN edge functions (Liu et al. eq. 2.10-2.12)",
    ),
)
