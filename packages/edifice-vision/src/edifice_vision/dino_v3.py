"""DINOv3: the self-supervised ViT backbone with 2-D rotary position embeddings and register tokens.

Siméoni et al. (2025), "DINOv3", https://arxiv.org/abs/2508.10104. The backbone (§3.1 and Table 14, the authors'
``dinov3/layers/rope_position_encoding.py``; transformers' ``DINOv3ViTModel`` follows it):

* no absolute position embedding: each block rotates the patch tokens' queries and keys by axial RoPE over patch
  centres normalised to ``[-1, 1]`` (``y = 2 (i + ½) / H_p - 1``), ``head_dim / 4`` periods ``θ^(-4k / head_dim)``
  (``θ = rope_theta = 100``), ``2π y ω_k`` on the first half of each rotary pair set and ``2π x ω_k`` on the second
  (:func:`~edifice_vision._vit_blocks.grid_rope`); class and register tokens are not rotated. Any image size whose
  sides the patch divides runs without interpolation;
* RoPE "box jittering" (§3.1): while training, coordinates are scaled by a log-uniform factor in ``[1/s, s]``
  (``rope_rescale = s``; the paper uses 2, off by default here so a training step is deterministic);
* four register tokens after the class token; LayerScale on both residual branches; no bias on the key projection
  (the released models mask it to zero); MLP, or SwiGLU for the 7B teacher; LayerNorm eps 1e-5.

The output is the final LayerNorm's class token (``num_classes = 0``); a linear head sits on it when
``num_classes > 0``. Not built: the training (DINO/iBOT/KoLeo losses, Gram anchoring, the heads of the catalogue's
``dino_*``/``ibot_*`` options), the RoPE shift and jitter augmentations (transformers' defaults leave them off),
masked-token inputs, and the ConvNeXt students.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from edifice.config import ArchConfig
from edifice_vision._vit_blocks import grid_rope
from edifice_vision.configs.dino_v3 import DINOv3Config
from edifice_vision.vit import VisionTransformer

__all__ = ["DINOv3"]


class DINOv3(VisionTransformer):
    """The DINOv3 ViT: a :class:`VisionTransformer` with ``positional='rope'`` and RoPE box jitter in training."""

    config_class: ClassVar[type[ArchConfig]] = DINOv3Config
    config: DINOv3Config

    def stage_inputs(self, images: Tensor) -> dict[str, Tensor | tuple[Tensor, ...]]:
        """The grid's RoPE angles, with coordinates rescaled by ``exp(U(-log s, log s))`` while training."""
        c = self.config
        if c.positional != "rope" or not (self.training and c.rope_rescale):
            return super().stage_inputs(images)
        log_s = math.log(c.rope_rescale)
        rescale = torch.empty((), device=images.device).uniform_(-log_s, log_s).exp()
        grid = (images.shape[-2] // c.patch_size, images.shape[-1] // c.patch_size)
        rope = grid_rope(
            grid, c.d_model // c.n_heads, c.rope_theta, self.num_prefix_tokens, device=images.device, rescale=rescale
        )
        return {"rope": rope}
