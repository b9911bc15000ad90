"""Config of ``swin``: the Swin Transformer of Liu et al. 2021 (torch-free).

The model is :mod:`edifice_vision.swin`: a 4x4 patch embedding, then stages of pairs of blocks with window (W-MSA) and
shifted-window (SW-MSA) self-attention with a relative position bias, a patch merging (2x2 neighbours concatenated,
``4C -> 2C``) in front of every stage but the first, a final LayerNorm, average pooling and the classifier. The
defaults are Swin-T (§3.3: C = 96, layer numbers (2, 2, 6, 2), heads (3, 6, 12, 24), M = 7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["CONVERTERS", "SPECS", "SwinConfig"]

LIU = Paper(
    "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    "Liu, Lin, Cao, Hu, Wei, Zhang, Lin & Guo",
    2021,
    "2103.14030",
)


@dataclasses.dataclass(kw_only=True)
class SwinConfig(ImageConfig):
    """Swin: ``depths[i]`` blocks with ``n_heads[i]`` heads at width ``d_model * 2**i``, windows of ``window_size``."""

    arch: str = field("swin", "Registry name of the architecture this config builds.")
    image_size: int = field(224, "Side of the training images (windows larger than a stage's grid shrink to it).")
    patch_size: int = field(4, "Side of the non-overlapping patches of the embedding (§3.1: 4).")
    d_model: int = field(96, "Channels C of the first stage; each patch merging doubles them (§3.1).")
    depths: tuple[int, ...] = field((2, 2, 6, 2), "Blocks per stage (Swin-T: (2, 2, 6, 2)); W-MSA, SW-MSA alternate.")
    n_heads: tuple[int, ...] = field((3, 6, 12, 24), "Attention heads of each stage (head size 32 in the paper).")
    window_size: int = field(7, "Side M of the attention windows (§3.2: M = 7); shifted by M // 2 in SW-MSA.")
    mlp_ratio: float = field(4.0, "MLP hidden width as a multiple of the stage width (§3.3: α = 4).")
    qkv_bias: bool = field(True, "Biases on the query, key and value projections.")
    norm_eps: float = field(1e-5, "Epsilon of every LayerNorm.")
    attn_drop_rate: float = field(0.0, "Dropout on the attention probabilities.")
    proj_drop_rate: float = field(0.0, "Dropout after the attention output and after each MLP layer.")

    aliases: ClassVar[Mapping[str, str]] = {
        **ImageConfig.aliases,
        "embed_dim": "d_model",
        "hidden_size": "d_model",
        "num_heads": "n_heads",
        "layer_norm_eps": "norm_eps",
    }
    #: Derived sizes the spec's shapes name (``features [B, num_features]``).
    spec_properties: ClassVar[tuple[str, ...]] = ("num_features",)

    @property
    def num_features(self) -> int:
        """Channels of the last stage, ``d_model * 2**(stages - 1)`` (the pooled feature size)."""
        return int(self.d_model * 2 ** (len(self.depths) - 1))

    def validate(self) -> None:
        """Positive sizes; one depth and head count per stage, each head count dividing its stage's width."""
        super().validate()
        self.check_positive("patch_size", "d_model", "window_size", "mlp_ratio", "norm_eps")
        for name in ("attn_drop_rate", "proj_drop_rate"):
            self.check_range(name, 0.0, 1.0)
            if getattr(self, name) == 1.0:
                self.fail(name, "must be < 1")
        if not self.depths or any(n < 1 for n in self.depths):
            self.fail("depths", "must list at least one stage, each with >= 1 block")
        if len(self.n_heads) != len(self.depths) or any(h < 1 for h in self.n_heads):
            self.fail("n_heads", f"must give one positive head count per stage ({len(self.depths)} stages in depths)")
        for i, heads in enumerate(self.n_heads):
            if (self.d_model * 2**i) % heads:
                self.fail("n_heads", f"stage {i} has width {self.d_model * 2**i}, not divisible by {heads} heads")
        if self.image_size % self.patch_size:
            self.fail("image_size", f"must be a multiple of patch_size={self.patch_size}, got {self.image_size}")
        if int(self.mlp_ratio * self.d_model) < 1:
            self.fail("mlp_ratio", "leaves a hidden width below 1")


SPECS = (
    image_spec(
        "swin",
        family="vision",
        summary="Swin Transformer: shifted-window attention with relative position bias, patch merging between stages.",
        paper=LIU,
        config="edifice_vision.configs.swin:SwinConfig",
        model="edifice_vision.swin:Swin",
        num_features="num_features",
        tiny={
            "image_size": 16,
            "patch_size": 2,
            "d_model": 8,
            "depths": (2, 1),
            "n_heads": (2, 2),
            "window_size": 4,
            "num_classes": 10,
        },
        verification="parity:timm.models.swin_transformer.SwinTransformer",
        interop=("timm.models.swin_transformer.SwinTransformer",),
    ),
)

CONVERTERS = (
    Converter(
        "timm.swin",
        "swin",
        "edifice_vision.swin:from_timm",
        "timm Swin Transformer (V1) checkpoints, e.g. swin_tiny_patch4_window7_224 (model; state dict + image_size).",
    ),
)
