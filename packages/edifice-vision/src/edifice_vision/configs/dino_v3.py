"""Config of ``dino_v3``: the DINOv3 ViT backbone -- 2-D RoPE, register tokens, LayerScale (torch-free).

The model is :mod:`edifice_vision.dino_v3` (Siméoni et al. 2025): a ViT without absolute position embeddings whose
patch tokens' queries and keys are rotated by axial 2-D RoPE over normalised patch coordinates, with four register
tokens, LayerScale and no key bias. It returns the class token's features by default (``num_classes = 0``).
"""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_vision.configs.vit import TINY, ViTConfig, vit_spec

__all__ = ["CONVERTERS", "SPECS", "DINOv3Config"]

SIMEONI = Paper("DINOv3", "Siméoni et al.", 2025, "2508.10104")


@dataclasses.dataclass(kw_only=True)
class DINOv3Config(ViTConfig):
    """DINOv3 ViT: RoPE on the patch grid, class + register tokens, LayerScale, MLP or SwiGLU, patch 16."""

    arch: str = field("dino_v3", "Registry name of the architecture this config builds.")
    num_classes: int = field(0, "Classes of a linear head on the class token; 0 (default) returns its features.")
    positional: str = field("rope", "Positions: 'rope' (the paper's 2-D RoPE) or 'learned'.")
    num_register_tokens: int = field(4, "Register tokens after the class token (the paper's 4).")
    layer_scale: float | None = field(1e-5, "Initial LayerScale gain of each residual branch.")
    key_bias: bool = field(False, "Bias on the key projection (the released models have none).")
    norm_eps: float = field(1e-5, "Epsilon of the LayerNorms.")
    rope_rescale: float | None = field(
        None, "Training-time RoPE box jitter: coordinates scaled by a log-uniform factor in [1/s, s] (paper: 2)."
    )

    def validate(self) -> None:
        """As ViT, plus a rescale factor >= 1."""
        super().validate()
        if self.rope_rescale is not None and self.rope_rescale < 1.0:
            self.fail("rope_rescale", f"must be >= 1 or None, got {self.rope_rescale}")


SPECS = (
    vit_spec(
        "dino_v3",
        "DINOv3 ViT backbone: axial 2-D RoPE on patch tokens, registers, LayerScale, no absolute positions.",
        SIMEONI,
        config="edifice_vision.configs.dino_v3:DINOv3Config",
        model="edifice_vision.dino_v3:DINOv3",
        tiny={**TINY, "num_register_tokens": 2},
        verification="parity:transformers.DINOv3ViTModel",
        grad_exempt={},
        interop=("transformers.DINOv3ViTModel",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.DINOv3ViTModel",
        "dino_v3",
        "edifice_vision._vit_convert:from_transformers_dinov3",
        "transformers DINOv3ViTModel checkpoints: images -> class-token features.",
    ),
)
