"""DINOv2: the self-supervised ViT backbone -- LayerScale, SwiGLU option, registers, resampled positions.

Oquab et al. (2023), "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024,
https://arxiv.org/abs/2304.07193. The backbone (§4 and Appendix B; the authors'
``dinov2/models/vision_transformer.py``):

* a ViT (:class:`~edifice_vision.vit.VisionTransformer`) with patch 14 and learned positions for a 37x37 grid
  (518-pixel images), resampled bicubically *without* antialiasing to the grid of any input (the authors'
  ``interpolate_pos_encoding``; transformers' ``Dinov2Embeddings`` computes the same);
* LayerScale (Touvron et al. 2021, CaiT) on both residual branches of every block, initialised to 1e-5;
* the SwiGLU feed-forward option of the giant model (§4: "SwiGLU for ViT-g"), hidden width ``2/3`` of the MLP's,
  rounded up to a multiple of 8, with biases;
* register tokens (Darcet et al. 2024, "Vision Transformers Need Registers", https://arxiv.org/abs/2309.16588, §2.2)
  inserted after the class token, with no position embedding, and dropped from every output but the sequence.

The output is the final LayerNorm's class token (``num_classes = 0``), as the authors' ``x_norm_clstoken``; a linear
head sits on it when ``num_classes > 0``. Not built: the self-supervised training (the DINO and iBOT heads and losses,
KoLeo, Sinkhorn-Knopp centring, the EMA teacher) -- the catalogue's ``head_*`` options; the authors' pre-2024
``interpolate_offset`` (0.1) resampling, which transformers dropped; masked-token inputs (``mask_token``).
"""

from __future__ import annotations

from typing import ClassVar

from edifice.config import ArchConfig
from edifice_vision.configs.dino_v2 import DINOv2Config
from edifice_vision.vit import VisionTransformer

__all__ = ["DINOv2"]


class DINOv2(VisionTransformer):
    """The DINOv2 ViT (a :class:`VisionTransformer` with LayerScale, registers and DINOv2's SwiGLU width)."""

    config_class: ClassVar[type[ArchConfig]] = DINOv2Config
    config: DINOv2Config
