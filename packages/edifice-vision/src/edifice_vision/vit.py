"""Vision Transformer (ViT): an image as a sequence of 16x16 patches, read by a plain transformer encoder.

Dosovitskiy et al. (2021), "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", ICLR 2021,
https://arxiv.org/abs/2010.11929. Implemented (§3.1):

* eq. (1) ``z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos`` -- patch embedding, class token and learned 1-D
  position embeddings (:class:`~edifice_vision._vit_blocks.ViTStem`);
* eqs. (2)-(3) ``L`` pre-norm blocks of multi-head self-attention and a two-layer GELU MLP, residual
  (:class:`~edifice_vision._vit_blocks.ViTBlock`; each block is one "stage" of the backbone API);
* eq. (4) ``y = LN(z_L^0)`` -- the final LayerNorm and the class token's state feed a linear head (the fine-tuning
  head of §3.1; pre-training's one-hidden-layer MLP head is not built).

§3.2 fine-tuning at higher resolution: ``E_pos`` is resampled by 2-D (bicubic) interpolation to the patch grid of
each batch, and to this model's grid when a checkpoint of another resolution is loaded. An image side the patch does
not divide raises a ``ValueError`` naming the size and the patch.

Where the paper is silent we follow timm's ``vision_transformer.py`` (the reference used for parity): LayerNorm
eps 1e-6, qkv biases, truncated-normal(0.02) position embeddings and linear weights, zero biases, class token
N(0, 1e-6²). ``global_pool='avg'`` with ``fc_norm`` normalises the pooled patch tokens instead (timm's GAP models).

Deviation: the attention's query/key/value projections are three linears (core's attention) where timm fuses them
into one ``qkv``; the converter splits timm's weights.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice_vision._backbone import FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision._vit_blocks import LayerScale, ViTBlock, ViTStem, grid_rope
from edifice_vision.configs.vit import ViTConfig

__all__ = ["VisionTransformer"]


class VisionTransformer(ImageBackbone):
    """ViT backbone: ``ViTStem -> ViTBlock x n_layers -> LayerNorm -> pool -> head`` with timm's API."""

    config_class: ClassVar[type[ArchConfig]] = ViTConfig
    config: ViTConfig
    #: Tokens in front of the patches that carry a position besides the class token (DeiT: 1).
    num_extra_tokens: ClassVar[int] = 0

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        c = config
        self.stem = ViTStem(c, num_extra_tokens=self.num_extra_tokens)
        self.num_prefix_tokens = self.stem.num_prefix_tokens
        self.patch_stride = c.patch_size
        rates = stochastic_depth_rates(c.drop_path_rate, c.n_layers)
        self.stages = nn.ModuleList(ViTBlock(c, rate) for rate in rates)
        norm = get_norm("layernorm", c.d_model, eps=c.norm_eps)
        self.final_norm = nn.Identity() if c.fc_norm else norm
        self.fc_norm = norm if c.fc_norm else nn.Identity()
        self.feature_info = [FeatureInfo(c.d_model, c.patch_size, f"stages.{i}") for i in range(c.n_layers)]
        self.init_head(c.d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's ViT init: linear weights truncated N(0, 0.02²) with zero biases; norms unit; tokens as the stem."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm | LayerScale | ViTStem):
                module.reset_parameters()

    def stage_inputs(self, images: Tensor) -> dict[str, Tensor | tuple[Tensor, ...]]:
        """The 2-D RoPE angles of the batch's patch grid (``positional='rope'``); nothing otherwise."""
        c = self.config
        if c.positional != "rope":
            return {}
        grid = (images.shape[-2] // c.patch_size, images.shape[-1] // c.patch_size)
        rope = grid_rope(grid, c.d_model // c.n_heads, c.rope_theta, self.num_prefix_tokens, device=images.device)
        return {"rope": rope}

    def pool(self, features: Tensor) -> Tensor:
        """timm's pooling (class token, or mean/max of the patch tokens), then ``fc_norm`` where configured."""
        pooled: Tensor = self.fc_norm(super().pool(features))
        return pooled
