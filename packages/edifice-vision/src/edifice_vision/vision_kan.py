"""Vision KAN (ViK): an attention-free MetaFormer whose token mixer is a Kolmogorov-Arnold layer on pixel windows.

Yang, Zhang, Luo, Wu, Lu & Shen (2026), "Vision KAN: Towards an Attention-Free Backbone for Vision with
Kolmogorov-Arnold Networks", https://arxiv.org/abs/2601.21541, built as the authors' released code
(https://github.com/SeriYann/ViK, ``models/vik.py``) builds it. Each block is a MetaFormer block (one-group GroupNorm,
LayerScale, stochastic depth) whose token mixer is MultiPatch-KAN (:class:`MultiPatchKAN`), three steps in sequence:

1. patch-wise KAN: every channel is cut into ``ps x ps`` windows (``ps = kan_patch_size``); the ``ps²`` pixels of a
   window are the inputs of one KAN layer with ``ps²`` outputs (shared by all windows and channels), added back to the
   window -- ``Z = X + KAN(X)``. The KAN is :class:`~edifice_vision._kan.KANLayer`: edge functions
   ``φ(x) = w_b silu(x) + w_s Σ_k c_k B_k(x)`` on B-splines (Liu et al. 2024, eq. 2.10-2.12; ``basis='bspline'``) or
   the paper's Gaussian RBFs (``basis='rbf'``);
2. axis-wise separable mixing: depthwise ``k x 1`` and ``1 x k`` convolutions combined by two softmax weights that a
   small head computes from the map's global average -- ``Z = a_h conv_h(Z) + a_w conv_w(Z)``;
3. low-rank global mapping: ``Z = Z + U V Z`` over the ``H W`` positions of each channel (``V: HW -> r``,
   ``U: r -> HW``, no bias, ``r = min(global_rank, HW)``).

The backbone is the authors' ``ViK``: a ``7x7``/4 stem convolution (``patch_size`` p sets stride p, kernel 2p - 1,
padding p // 2), a ``3x3``/2 convolution before each later stage, a final GroupNorm, global average pooling and a
linear head.

The global map fixes ``H W`` per stage, so a model reads images of its ``image_size`` only: another size raises a
``ValueError`` naming the expected size (the authors' code builds its layers lazily at the first input size).

Deviations: the KAN is B-spline by default, as issue 13 asks; ``basis='rbf'`` is the paper's RBFKAN (centres and widths
learned per input as in the released code) with an extra per-edge scale ``w_s`` (init 1). The released code's fixed
sizes (``num_grids=8``, axis kernel 3, rank 64, window 7) are fields with those defaults. Linear layers are initialised
truncated ``N(0, 0.02²)`` with zero biases (the released code's ``cls_init_weights``) except the KAN's own parameters
(:meth:`KANLayer.reset_parameters <edifice_vision._kan.KANLayer.reset_parameters>`).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from edifice.blocks.ffn import FeedForward
from edifice.config import ArchConfig
from edifice_vision._backbone import DropPath, FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision._kan import KANLayer
from edifice_vision._metaformer import GroupNorm1
from edifice_vision._vit_blocks import LayerScale
from edifice_vision.configs.vision_kan import VisionKANConfig

__all__ = ["MultiPatchKAN", "VisionKAN", "VisionKANBlock"]


class MultiPatchKAN(nn.Module):
    """The token mixer on ``[B, H, W, C]``: windowed KAN, axis-wise depthwise mixing, low-rank global map."""

    def __init__(self, config: VisionKANConfig, dim: int, side: int) -> None:
        super().__init__()
        c = config
        ps, k = c.kan_patch_size, c.dw_kernel_size
        self.window = ps
        self.kan = KANLayer(
            ps * ps,
            ps * ps,
            grid_size=c.grid_size,
            spline_order=c.spline_order,
            grid_range=c.grid_range,
            basis=c.basis,
        )
        self.conv_h = nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim)
        self.conv_w = nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim)
        hidden = max(8, dim // 4)
        self.reweight = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, 2, 1), nn.Softmax(dim=1)
        )
        positions = side * side
        rank = min(c.global_rank, positions)
        self.global_down = nn.Linear(positions, rank, bias=False)  # V
        self.global_up = nn.Linear(rank, positions, bias=False)  # U

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C] -> [B, H, W, C]``."""
        B, H, W, C = x.shape
        ps = self.window
        grid_h, grid_w = H // ps, W // ps
        # 1. every ps x ps window of every channel -> ps² KAN inputs
        windows = x.reshape(B, grid_h, ps, grid_w, ps, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, -1, ps * ps)
        windows = windows + self.kan(windows)
        z = windows.reshape(B, C, grid_h, grid_w, ps, ps).permute(0, 1, 2, 4, 3, 5).reshape(B, C, H, W)
        # 2. axis-wise separable mixing, reweighted by a softmax over the two axes
        weights: Tensor = self.reweight(z)  # (B, 2, 1, 1)
        z = weights[:, :1] * self.conv_h(z) + weights[:, 1:] * self.conv_w(z)
        # 3. low-rank global map over the H*W positions of each channel
        z = z + self.global_up(self.global_down(z.flatten(2))).view(B, C, H, W)
        out: Tensor = z.permute(0, 2, 3, 1)
        return out


class VisionKANBlock(nn.Module):
    """``X + DropPath(LS(Mixer(GN(X))))``, then ``X + DropPath(LS(MLP(GN(X))))`` on ``[B, H, W, C]``."""

    def __init__(self, config: VisionKANConfig, dim: int, side: int, drop_path: float) -> None:
        super().__init__()
        c = config
        self.norm1 = GroupNorm1(dim, c.norm_eps)
        self.token_mixer = MultiPatchKAN(c, dim, side)
        self.layer_scale1 = LayerScale(dim, c.layer_scale)
        self.norm2 = GroupNorm1(dim, c.norm_eps)
        self.mlp = FeedForward(dim, int(c.mlp_ratio * dim), activation="gelu", dropout=c.proj_drop_rate)
        self.mlp_drop = nn.Dropout(c.proj_drop_rate)
        self.layer_scale2 = LayerScale(dim, c.layer_scale)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C] -> [B, H, W, C]``."""
        x = x + self.drop_path(self.layer_scale1(self.token_mixer(self.norm1(x))))
        out: Tensor = x + self.drop_path(self.layer_scale2(self.mlp_drop(self.mlp(self.norm2(x)))))
        return out


class VisionKANStage(nn.Module):
    """``[B, C, H, W] -> [B, C', H', W']``: a 3x3/2 convolution (all stages but the first), then the blocks."""

    def __init__(self, downsample: nn.Module, blocks: list[VisionKANBlock]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Downsample, then the blocks channels-last."""
        out: Tensor = self.blocks(self.downsample(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return out.contiguous()


class ImageSizeCheck(nn.Module):
    """The stem: checks the image size the global maps are sized for, then the strided convolution."""

    def __init__(self, config: VisionKANConfig) -> None:
        super().__init__()
        self.config = config
        p = config.patch_size
        self.conv = nn.Conv2d(config.in_chans, config.channels[0], 2 * p - 1, stride=p, padding=p // 2)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, in_chans, S, S] -> [B, channels[0], S/p, S/p]``; another size raises a ``ValueError``."""
        c = self.config
        if tuple(images.shape[-2:]) != (c.image_size, c.image_size):
            raise ValueError(
                f"{c.arch}: image size {images.shape[-2]}x{images.shape[-1]}, but the low-rank global maps are sized "
                f"for {c.image_size}x{c.image_size} images; resize the images to {c.image_size}x{c.image_size}"
            )
        out: Tensor = self.conv(images)
        return out


class VisionKAN(ImageBackbone):
    """ViK backbone: ``stem -> stages of MultiPatch-KAN blocks -> GroupNorm -> pool -> head``, timm's API."""

    config_class: ClassVar[type[ArchConfig]] = VisionKANConfig
    config: VisionKANConfig

    def __init__(self, config: VisionKANConfig) -> None:
        super().__init__(config)
        c = config
        self.stem = ImageSizeCheck(c)
        rates = iter(stochastic_depth_rates(c.drop_path_rate, sum(c.depths)))
        stages = []
        for i, (dim, depth, side) in enumerate(zip(c.channels, c.depths, c.stage_sides(), strict=True)):
            down = nn.Conv2d(c.channels[i - 1], dim, 3, stride=2, padding=1) if i else nn.Identity()
            stages.append(VisionKANStage(down, [VisionKANBlock(c, dim, side, next(rates)) for _ in range(depth)]))
        self.stages = nn.ModuleList(stages)
        self.final_norm = nn.GroupNorm(1, c.channels[-1], eps=c.norm_eps)
        self.feature_info = [FeatureInfo(dim, c.patch_size * 2**i, f"stages.{i}") for i, dim in enumerate(c.channels)]
        self.init_head(c.channels[-1])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linears truncated ``N(0, 0.02²)``, zero biases; convolutions PyTorch's default; KAN, norms, scales own."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d | nn.GroupNorm | GroupNorm1 | LayerScale | KANLayer):
                module.reset_parameters()

    def kan_layers(self) -> list[KANLayer]:
        """Every block's KAN layer (to inspect or plot the learned edge functions)."""
        return [m for m in self.modules() if isinstance(m, KANLayer)]
