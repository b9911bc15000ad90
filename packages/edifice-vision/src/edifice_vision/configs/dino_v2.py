"""Config of ``dino_v2``: the DINOv2 ViT backbone -- LayerScale, optional SwiGLU and registers (torch-free).

The model is :mod:`edifice_vision.dino_v2` (Oquab et al. 2023): a ViT with LayerScale on every residual branch, an
optional SwiGLU feed-forward, optional register tokens (Darcet et al. 2024) and non-antialiased bicubic resampling
of the position embeddings to any grid. It returns the class token's features by default (``num_classes = 0``).
"""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_vision.configs.vit import TINY, ViTConfig, vit_spec

__all__ = ["CONVERTERS", "SPECS", "DINOv2Config"]

OQUAB = Paper("DINOv2: Learning Robust Visual Features without Supervision", "Oquab et al.", 2023, "2304.07193")


@dataclasses.dataclass(kw_only=True)
class DINOv2Config(ViTConfig):
    """DINOv2 ViT: ViT blocks with LayerScale, MLP or SwiGLU, registers after the class token, patch 14."""

    arch: str = field("dino_v2", "Registry name of the architecture this config builds.")
    num_classes: int = field(0, "Classes of a linear head on the class token; 0 (default) returns its features.")
    image_size: int = field(518, "Side of the pre-training images (the stored position grid is 37x37).")
    patch_size: int = field(14, "Side of the square patches (pixels).")
    layer_scale: float | None = field(1e-5, "Initial LayerScale gain of each residual branch (the authors' 1e-5).")
    pos_embed_antialias: bool = field(False, "Antialias the bicubic resampling of E_pos (the authors' code: no).")

    def ffn_width(self) -> int:
        """``ffn_hidden``, else ``mlp_ratio * d_model``; SwiGLU keeps 2/3 of it, rounded up to a multiple of 8."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        width = int(self.mlp_ratio * self.d_model)
        return (int(width * 2 / 3) + 7) // 8 * 8 if self.ffn == "swiglu" else width


SPECS = (
    vit_spec(
        "dino_v2",
        "DINOv2 ViT backbone: LayerScale, SwiGLU option, register tokens, resampled position embeddings.",
        OQUAB,
        config="edifice_vision.configs.dino_v2:DINOv2Config",
        model="edifice_vision.dino_v2:DINOv2",
        tiny={**TINY, "num_register_tokens": 2},
        verification="parity:transformers.Dinov2Model",
        interop=("transformers.Dinov2Model", "transformers.Dinov2WithRegistersModel"),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.Dinov2Model",
        "dino_v2",
        "edifice_vision._vit_convert:from_transformers_dinov2",
        "transformers Dinov2Model / Dinov2WithRegistersModel checkpoints: images -> class-token features.",
    ),
    Converter(
        "timm.VisionTransformer.dinov2",
        "dino_v2",
        "edifice_vision._vit_convert:from_timm_dinov2",
        "timm vit_*_patch14_(reg4_)dinov2 checkpoints: images -> class-token features.",
    ),
)
