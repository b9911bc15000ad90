"""``unet``: the U-Net of Ronneberger, Fischer & Brox 2015 as the diffusion denoiser of Ho, Jain & Abbeel 2020.

"U-Net: Convolutional Networks for Biomedical Image Segmentation", https://arxiv.org/abs/1505.04597: a contracting
path and a symmetric expanding path, each expanding step concatenating the feature map of the same resolution from
the contracting path (§2, Fig. 1). "Denoising Diffusion Probabilistic Models", https://arxiv.org/abs/2006.11239,
§4 and Appendix B: the U-Net built from Wide-ResNet blocks with GroupNorm, self-attention at the 16x16 resolution,
and the diffusion time ``t`` given to every residual block through the Transformer sinusoidal embedding.

``x [B, C, H, W], timestep [B] (, class_labels [B]) -> [B, C_out, H, W]``:

- time embedding (DDPM's ``get_timestep_embedding``): ``e(t) = [sin(t ω_i), cos(t ω_i)]``,
  ``ω_i = 10000^(-i / (d/2 - 1))``, ``i = 0..d/2-1``, ``d = base_features``, then Linear-SiLU-Linear to
  ``4 d`` (core's :class:`~edifice.blocks.positional.TimestepEmbedding`, features in fp32); a class embedding
  (``nn.Embedding``) is added to it when ``num_classes > 0`` (diffusers' ``num_class_embeds``; DDPM itself is
  unconditional);
- residual block: ``h = conv(SiLU(GN(x))) + Linear(SiLU(emb)); h = conv(dropout(SiLU(GN(h)))); x' + h``
  (``x'`` a 1x1 conv when the width changes), so the time enters every residual block;
- attention block: ``x + proj(softmax(q k^T / sqrt(d)) v)`` over the ``H W`` positions, after GroupNorm;
- ``len(channel_mults)`` levels; strided 3x3 convolution down, nearest-neighbour x2 and a 3x3 convolution up; the
  decoder's residual blocks take the concatenation of the previous output and the skipped encoder feature
  (``layers_per_block + 1`` per level, DDPM's layout); a middle block Res-Attn-Res at the lowest resolution.

Deviations from Ronneberger 2015 (all DDPM's): padded convolutions (output size = input size, no cropping), residual
blocks with GroupNorm and SiLU instead of two plain ReLU convolutions, strided convolutions instead of max pooling,
nearest upsampling + conv instead of transposed convolutions. Initialisation: PyTorch's defaults, with the last
convolution of every residual block, the attention output projection and the output convolution zeroed, as DDPM's
code does (``init_scale=0``), so every block starts as the identity. The image sides must be multiples of
``2^(levels - 1)``; other sizes raise ``InputError``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.positional import TimestepEmbedding
from edifice.config import ArchConfig
from edifice.errors import InputError
from edifice.initialization import reset_submodules
from edifice.model import Model
from edifice_vision.configs.unet import UNetConfig

__all__ = ["AttentionBlock", "ResBlock", "UNet", "UNet2D"]


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class ResBlock(nn.Module):
    """DDPM's residual block: two GroupNorm-SiLU-conv3x3 with the (class +) time embedding added in between."""

    def __init__(self, d_in: int, d_out: int, emb_dim: int, *, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, d_in), nn.Conv2d(d_in, d_out, 3, padding=1)
        self.time_proj = nn.Linear(emb_dim, d_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, d_out), nn.Conv2d(d_out, d_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(d_in, d_out, 1) if d_in != d_out else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch defaults; the second convolution zeroed (DDPM's ``init_scale=0``)."""
        for m in (self.norm1, self.conv1, self.time_proj, self.norm2):
            m.reset_parameters()
        if isinstance(self.shortcut, nn.Conv2d):
            self.shortcut.reset_parameters()
        _zero(self.conv2)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x [B, d_in, H, W]``, ``emb [B, emb_dim]`` -> ``[B, d_out, H, W]``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(F.silu(emb))[:, :, None, None]  # the time enters here
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        out: Tensor = self.shortcut(x) + h
        return out


class AttentionBlock(nn.Module):
    """Self-attention over the ``H W`` positions of a feature map, residual, after GroupNorm (DDPM's ``attn_block``)."""

    def __init__(self, channels: int, *, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch defaults; the output projection zeroed (DDPM)."""
        self.norm.reset_parameters()
        self.qkv.reset_parameters()
        _zero(self.proj)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        o = ops.sdpa(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))  # (B, heads, HW, d)
        out: Tensor = x + self.proj(o.transpose(-1, -2).reshape(B, C, H, W))
        return out


class _Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, each optionally followed by attention."""

    res: nn.ModuleList
    attn: nn.ModuleList
    resample: nn.Module | None

    def __init__(self, res: list[ResBlock], attn: list[nn.Module], resample: nn.Module | None) -> None:
        super().__init__()
        self.res, self.attn = nn.ModuleList(res), nn.ModuleList(attn)
        self.resample = resample


class _Middle(nn.Module):
    """Res - (attention) - Res at the lowest resolution."""

    def __init__(self, channels: int, emb_dim: int, *, attention: bool, heads: int, dropout: float, groups: int):
        super().__init__()
        self.res1 = ResBlock(channels, channels, emb_dim, dropout=dropout, groups=groups)
        self.attn = AttentionBlock(channels, heads=heads, groups=groups) if attention else nn.Identity()
        self.res2 = ResBlock(channels, channels, emb_dim, dropout=dropout, groups=groups)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        out: Tensor = self.res2(self.attn(self.res1(h, emb)), emb)
        return out


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return out


class UNet2D(nn.Module):
    """The U-Net denoiser body (the block ``unet``): ``(x, timestep, class_labels) -> [B, out_channels, H, W]``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        base_features: int = 128,
        channel_mults: tuple[int, ...] = (1, 2, 2, 2),
        layers_per_block: int = 2,
        attention_levels: tuple[int, ...] = (1,),
        num_heads: int = 1,
        dropout: float = 0.1,
        norm_groups: int = 32,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.base_features, self.levels, self.num_classes = base_features, len(channel_mults), num_classes
        emb_dim = 4 * base_features
        # DDPM's sinusoid (sin first, ω_i = 10000^(-i/(d/2-1))) through Linear-SiLU-Linear: core's block.
        self.time_embed = TimestepEmbedding(
            emb_dim, frequency_dim=base_features, flip_sin_to_cos=False, downscale_freq_shift=1.0
        )
        self.class_embed = nn.Embedding(num_classes, emb_dim) if num_classes > 0 else None
        self.conv_in = nn.Conv2d(in_channels, base_features, 3, padding=1)
        kw = {"dropout": dropout, "groups": norm_groups}

        def attention(level: int, channels: int) -> nn.Module:
            if level in attention_levels:
                return AttentionBlock(channels, heads=num_heads, groups=norm_groups)
            return nn.Identity()

        # Contracting path: remember the width of every feature map the decoder will take back.
        skips, ch = [base_features], base_features
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            res, attn, width = [], [], base_features * mult
            for _ in range(layers_per_block):
                res.append(ResBlock(ch, width, emb_dim, **kw))  # type: ignore[arg-type]
                attn.append(attention(level, width))
                ch = width
                skips.append(ch)
            last = level == len(channel_mults) - 1
            down = None if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1)
            if down is not None:
                skips.append(ch)
            self.down.append(_Level(res, attn, down))
        self.mid = _Middle(ch, emb_dim, attention=bool(attention_levels), heads=num_heads, **kw)  # type: ignore[arg-type]
        # Expanding path: each residual block concatenates one skipped feature map (Ronneberger §2).
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            res, attn, width = [], [], base_features * mult
            for _ in range(layers_per_block + 1):
                res.append(ResBlock(ch + skips.pop(), width, emb_dim, **kw))  # type: ignore[arg-type]
                attn.append(attention(level, width))
                ch = width
            self.up.append(_Level(res, attn, _Upsample(ch) if level > 0 else None))
        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.conv_out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    def reset_parameters(self) -> None:
        """Every block's own initialisation, and the output convolution zeroed (DDPM): the network outputs 0."""
        reset_submodules(self)
        _zero(self.conv_out)

    def embed(self, timestep: Tensor, class_labels: Tensor | None) -> Tensor:
        """The conditioning vector ``[B, 4 base_features]``: time MLP of the sinusoid, plus the class embedding."""
        emb: Tensor = self.time_embed(timestep)
        if self.class_embed is not None:
            if class_labels is None:
                raise InputError("unet: input 'class_labels' is required when num_classes > 0")
            emb = emb + self.class_embed(class_labels)
        return emb

    @staticmethod
    def _levels(path: nn.ModuleList) -> list[_Level]:
        return [level for level in path if isinstance(level, _Level)]

    def forward(self, x: Tensor, timestep: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]`` (H, W multiples of ``2^(levels-1)``), ``timestep [B]`` -> ``[B, C_out, H, W]``."""
        factor = 1 << (self.levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise InputError(
                f"unet: input 'x' expected H and W multiples of 2^(levels-1) = {factor}, got {tuple(x.shape[-2:])}"
            )
        emb = self.embed(timestep, class_labels)
        h = self.conv_in(x)
        hs = [h]
        for level in self._levels(self.down):
            for res, attn in zip(level.res, level.attn, strict=True):
                h = attn(res(h, emb))
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)
                hs.append(h)
        h = self.mid(h, emb)
        for level in self._levels(self.up):
            for res, attn in zip(level.res, level.attn, strict=True):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb))  # the skip connection
            if level.resample is not None:
                h = level.resample(h)
        out: Tensor = self.conv_out(F.silu(self.norm_out(h)))
        return out


class UNet(Model):
    """The registered ``unet``: :class:`UNet2D` built from a :class:`UNetConfig`, with input checking."""

    config_class: ClassVar[type[ArchConfig]] = UNetConfig
    config: UNetConfig

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        c = config
        self.unet = UNet2D(
            c.in_channels,
            c.out_chans,
            base_features=c.base_features,
            channel_mults=c.channel_mults,
            layers_per_block=c.layers_per_block,
            attention_levels=c.attention_levels if c.use_attention else (),
            num_heads=c.num_heads,
            dropout=c.dropout,
            norm_groups=c.norm_groups,
            num_classes=c.num_classes,
        )

    def forward(self, x: Tensor, timestep: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """``x [B, in_channels, H, W]``, ``timestep [B]`` (, ``class_labels [B]``) -> ``[B, out_channels, H, W]``."""
        self.check_inputs(x=x, timestep=timestep, class_labels=class_labels)
        out: Tensor = self.unet(x, timestep, class_labels)
        return out
