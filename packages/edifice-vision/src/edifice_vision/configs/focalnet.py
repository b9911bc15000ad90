"""Config of ``focalnet``: the Focal Modulation Networks of Yang et al. 2022 (torch-free).

The model is :mod:`edifice_vision.focalnet`: Swin's hierarchy (a 4x4 patch embedding, stages at widths C, 2C, 4C, 8C
joined by 2x2 stride-2 patch embeddings) with every self-attention replaced by focal modulation. The defaults are
FocalNet-T with small receptive field (``focalnet_tiny_srf``: C = 96, depths (2, 2, 6, 2), L = 2, k = 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["CONVERTERS", "SPECS", "FocalNetConfig"]

YANG = Paper("Focal Modulation Networks", "Yang, Li, Dai, Yuan & Gao", 2022, "2203.11926")


@dataclasses.dataclass(kw_only=True)
class FocalNetConfig(ImageConfig):
    """FocalNet: ``depths[i]`` blocks at width ``d_model * 2**i`` with ``focal_levels[i]`` levels of context."""

    arch: str = field("focalnet", "Registry name of the architecture this config builds.")
    patch_size: int = field(4, "Stride of the stem's patch embedding (4 in the paper; 2 or 4 with overlap_down).")
    d_model: int = field(96, "Channels C of the first stage; each downsampling doubles them.")
    depths: tuple[int, ...] = field((2, 2, 6, 2), "Blocks per stage (FocalNet-T: (2, 2, 6, 2)).")
    focal_levels: tuple[int, ...] = field((2, 2, 2, 2), "Focal levels L of each stage (eq. 4; 'srf' 2, 'lrf' 3).")
    focal_windows: tuple[int, ...] = field((3, 3, 3, 3), "Kernel of the first level of each stage (level l: k + 2l).")
    focal_factor: int = field(2, "Growth of the depthwise kernel per focal level (k_l = focal_factor * l + k).")
    mlp_ratio: float = field(4.0, "MLP hidden width as a multiple of the stage width.")
    overlap_down: bool = field(False, "Overlapping convolutions (7x7/3x3) for the stem and downsampling layers.")
    post_norm: bool = field(False, "LayerNorm after the modulation and the MLP instead of before (large models).")
    post_norm_in_modulation: bool = field(False, "LayerNorm on q ⊙ h(Z_out) before the output projection (huge).")
    normalize_modulator: bool = field(False, "Divide the aggregated context by L + 1.")
    layer_scale: float | None = field(None, "Initial LayerScale gain of each residual branch; None for none.")
    norm_eps: float = field(1e-5, "Epsilon of every LayerNorm.")
    proj_drop_rate: float = field(0.0, "Dropout after the modulation's output projection and in the MLP.")

    aliases: ClassVar[Mapping[str, str]] = {
        **ImageConfig.aliases,
        "embed_dim": "d_model",
        "hidden_size": "d_model",
        "layerscale_value": "layer_scale",
        "use_overlap_down": "overlap_down",
        "use_post_norm": "post_norm",
        "use_post_norm_in_modulation": "post_norm_in_modulation",
        "layer_norm_eps": "norm_eps",
    }
    #: Derived sizes the spec's shapes name (``features [B, num_features]``).
    spec_properties: ClassVar[tuple[str, ...]] = ("num_features",)

    @property
    def num_features(self) -> int:
        """Channels of the last stage, ``d_model * 2**(stages - 1)`` (the pooled feature size)."""
        return int(self.d_model * 2 ** (len(self.depths) - 1))

    def validate(self) -> None:
        """Positive sizes; one focal level count and window per stage; overlap only at strides 2 and 4."""
        super().validate()
        self.check_positive("patch_size", "d_model", "focal_factor", "mlp_ratio", "norm_eps")
        self.check_range("proj_drop_rate", 0.0, 1.0)
        if self.proj_drop_rate == 1.0:
            self.fail("proj_drop_rate", "must be < 1")
        if not self.depths or any(n < 1 for n in self.depths):
            self.fail("depths", "must list at least one stage, each with >= 1 block")
        n = len(self.depths)
        if len(self.focal_levels) != n or any(level < 1 for level in self.focal_levels):
            self.fail("focal_levels", f"must give one level count >= 1 per stage ({n} stages in depths)")
        if len(self.focal_windows) != n or any(k < 1 or k % 2 == 0 for k in self.focal_windows):
            self.fail("focal_windows", f"must give one odd positive kernel per stage ({n} stages in depths)")
        if self.focal_factor % 2:
            self.fail("focal_factor", "must be even (every level's kernel stays odd, padded k // 2 per side)")
        if self.overlap_down and self.patch_size not in (2, 4):
            self.fail("patch_size", "must be 2 or 4 with overlap_down (7x7 or 3x3 overlapping stem)")
        if self.layer_scale is not None and self.layer_scale <= 0:
            self.fail("layer_scale", "must be > 0, or None for no layer scale")
        if int(self.mlp_ratio * self.d_model) < 1:
            self.fail("mlp_ratio", "leaves a hidden width below 1")


SPECS = (
    image_spec(
        "focalnet",
        family="vision",
        summary="FocalNet: focal modulation (depthwise-conv context levels, gated aggregation, q ⊙ h(context)).",
        paper=YANG,
        config="edifice_vision.configs.focalnet:FocalNetConfig",
        model="edifice_vision.focalnet:FocalNet",
        num_features="num_features",
        tiny={
            "image_size": 16,
            "patch_size": 2,
            "d_model": 8,
            "depths": (1, 1),
            "focal_levels": (2, 2),
            "focal_windows": (3, 3),
            "num_classes": 10,
        },
        verification="parity:timm.models.focalnet.FocalNet",
        interop=("timm.models.focalnet.FocalNet",),
    ),
)

CONVERTERS = (
    Converter(
        "timm.focalnet",
        "focalnet",
        "edifice_vision.focalnet:from_timm",
        "timm FocalNet checkpoints (srf/lrf and the large/xlarge/huge fl3/fl4 models; model or state dict).",
    ),
)
