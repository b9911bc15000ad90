"""The parts every plain Vision Transformer shares: patch embedding, token stem, the pre-norm block, 2-D RoPE.

Dosovitskiy et al. (2021), "An Image is Worth 16x16 Words", https://arxiv.org/abs/2010.11929, §3.1:

* eq. (1) ``z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos`` -- :class:`PatchEmbed` (the projection ``E`` of each
  flattened ``P x P`` patch, written as a stride-``P`` convolution, which is the same map) and :class:`ViTStem`
  (prefix tokens and learned positions ``E_pos``);
* eq. (2) ``z'_l = MSA(LN(z_{l-1})) + z_{l-1}`` and eq. (3) ``z_l = MLP(LN(z'_l)) + z'_l`` -- :class:`ViTBlock`,
  whose MSA is core's :class:`~edifice.blocks.attention.Attention` (bidirectional, through ``edifice.ops.sdpa``) and
  whose MLP is core's :func:`~edifice.blocks.ffn.get_ffn` (GELU MLP, or DINOv2's SwiGLU).

Additions the later papers need, each off by default: LayerScale (Touvron et al. 2021, CaiT, §2.1:
``z + diag(γ) f(z)``) and stochastic depth on each residual branch; register tokens (Darcet et al. 2024) inserted
after the tokens that carry a position; 2-D RoPE on the patch tokens (DINOv3, :func:`grid_rope`).

Position embeddings live on an ``image_size / patch_size`` grid and are resampled bicubically to any other grid at
forward and on load (:func:`resample_pos_embed`, §3.2 "we perform 2D interpolation of the pre-trained position
embeddings"). The block is not core's :class:`~edifice.blocks.transformer.TransformerBlock`: LayerScale and stochastic
depth sit inside each residual branch and the block takes the grid's RoPE angles, where TransformerBlock's contract is
the sequence-mixer one (masks, KV state, ``(y, aux)``); its parts are core's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.blocks.attention import Attention
from edifice.blocks.ffn import get_ffn
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import apply_rotary
from edifice_vision._backbone import DropPath
from edifice_vision.configs.vit import ViTConfig

__all__ = [
    "LayerScale",
    "PatchEmbed",
    "ViTAttention",
    "ViTBlock",
    "ViTStem",
    "check_image_size",
    "grid_rope",
    "resample_pos_embed",
]


def check_image_size(who: str, height: int, width: int, patch: int) -> None:
    """Raise a ``ValueError`` naming the size and patch when ``patch`` does not divide both sides."""
    if height % patch or width % patch:
        raise ValueError(
            f"{who}: image size {height}x{width} is not divisible by patch_size={patch}; "
            f"resize or pad the images to a multiple of {patch}"
        )


class PatchEmbed(nn.Module):
    """``[B, C, H, W] -> [B, H/P * W/P, D]``: each ``P x P`` patch flattened and projected by ``E`` (eq. 1)."""

    def __init__(self, in_chans: int, d_model: int, patch_size: int, *, who: str = "PatchEmbed") -> None:
        super().__init__()
        self.who = who
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        """Patch tokens in row-major grid order."""
        check_image_size(self.who, images.shape[-2], images.shape[-1], self.patch_size)
        tokens: Tensor = self.proj(images).flatten(2).transpose(1, 2)  # (B, N, D)
        return tokens


def resample_pos_embed(
    pos_embed: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix: int, *, antialias: bool
) -> Tensor:
    """Bicubic resampling of ``pos_embed [1, num_prefix + Ho*Wo, D]`` to a ``new_grid`` of patches (in fp32).

    The first ``num_prefix`` rows (class/distillation tokens) are kept; the grid rows are interpolated as an image
    (timm's ``resample_abs_pos_embed``, align_corners=False). Unchanged when the grids agree.
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    D = pos_embed.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)  # (1, D, Ho, Wo)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, D).to(pos_embed.dtype)  # (1, Hn*Wn, D)
    return torch.cat([prefix, grid], dim=1)


def grid_rope(
    grid: tuple[int, int],
    head_dim: int,
    theta: float,
    num_prefix: int,
    *,
    device: torch.device,
    rescale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Axial 2-D RoPE of DINOv3 on a ``grid`` of patches: fp32 ``(cos, sin)`` ``[num_prefix + Hp*Wp, head_dim]``.

    Patch centres are normalised to ``[-1, 1]`` per axis (``y_i = 2 (i + ½) / Hp - 1``); with ``head_dim / 4``
    periods ``ω_k = theta^(-4k / head_dim)``, the angles are ``2π y ω`` then ``2π x ω``, repeated in the rotate-half
    layout. The prefix tokens (class, registers) get angle 0 -- no rotation. ``rescale`` (a scalar, training-time
    augmentation) multiplies the coordinates.
    """
    Hp, Wp = grid
    ys = (torch.arange(Hp, device=device, dtype=torch.float32) + 0.5) / Hp * 2.0 - 1.0
    xs = (torch.arange(Wp, device=device, dtype=torch.float32) + 0.5) / Wp * 2.0 - 1.0
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # (N, 2): (y, x)
    if rescale is not None:
        coords = coords * rescale
    omega = theta ** -(torch.arange(0, head_dim // 4, device=device, dtype=torch.float32) * 4.0 / head_dim)
    angles = (2.0 * math.pi * coords[:, :, None] * omega).flatten(1)  # (N, D/2): y angles, then x angles
    angles = torch.cat([angles.new_zeros(num_prefix, angles.shape[1]), angles]).repeat(1, 2)  # (T, D)
    return angles.cos(), angles.sin()


class LayerScale(nn.Module):
    """Per-channel gain ``diag(γ)`` on a residual branch (CaiT §2.1), ``γ`` initialised to ``init``."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.init = init
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def reset_parameters(self) -> None:
        """``γ = init`` in every channel."""
        nn.init.constant_(self.gamma, self.init)

    def forward(self, x: Tensor) -> Tensor:
        """``x * γ`` over the last dimension."""
        return x * self.gamma


class ViTAttention(Attention):
    """Core's bidirectional multi-head attention, optionally with 2-D RoPE ``(cos, sin) [T, head_dim]`` on q and k."""

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """``x [B, T, d_model] -> [B, T, d_model]``: ``softmax(q k^T / sqrt(d)) v`` over all tokens (no mask)."""
        if rope is None:
            return super().forward(x)
        q, k, v = self._qkv(x, mask=None, positions=None, state=None)  # (B, H, T, D)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return self._attend(q, k, v, causal=False)


class ViTBlock(nn.Module):
    """``z = z + DropPath(LS(MSA(LN(z))))``, ``z = z + DropPath(LS(MLP(LN(z))))`` (eqs. 2-3 with LayerScale)."""

    def __init__(self, config: ViTConfig, drop_path: float) -> None:
        super().__init__()
        c = config
        self.norm1 = get_norm("layernorm", c.d_model, eps=c.norm_eps)
        self.attn = ViTAttention(
            c.d_model, c.n_heads, causal=False, bias=c.qkv_bias, out_bias=True, dropout=c.attn_drop_rate
        )
        if c.qkv_bias and not c.key_bias:
            self.attn.k_proj.register_parameter("bias", None)
        self.ls1: nn.Module = LayerScale(c.d_model, c.layer_scale) if c.layer_scale is not None else nn.Identity()
        self.norm2 = get_norm("layernorm", c.d_model, eps=c.norm_eps)
        options: dict[str, Any] = {"activation": c.activation} if c.ffn == "mlp" else {}
        self.mlp = get_ffn(c.ffn, c.d_model, c.ffn_width(), bias=True, dropout=c.proj_drop_rate, **options)
        self.ls2: nn.Module = LayerScale(c.d_model, c.layer_scale) if c.layer_scale is not None else nn.Identity()
        self.proj_drop = nn.Dropout(c.proj_drop_rate)  # after the attention output and after the MLP (paper B.1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Tokens ``[B, T, d_model]`` -> ``[B, T, d_model]``; ``rope`` the grid's angles (positional='rope')."""
        x = x + self.drop_path(self.ls1(self.proj_drop(self.attn(self.norm1(x), rope))))  # eq. (2)
        out: Tensor = x + self.drop_path(self.ls2(self.proj_drop(self.mlp(self.norm2(x)))))  # eq. (3)
        return out


class ViTStem(nn.Module):
    """Images to the token sequence ``[class, (distillation), registers, patches]`` of eq. (1).

    ``E_pos`` covers the class (and distillation) token and the patch grid; registers are inserted after those
    prefix tokens with no position (DINOv2 with registers). ``E_pos`` is stored on the ``image_size`` grid and
    resampled to the grid of each batch and to the grid of a checkpoint being loaded.
    """

    def __init__(self, config: ViTConfig, *, num_extra_tokens: int = 0) -> None:
        super().__init__()
        c = config
        self.config = c
        self.patch_embed = PatchEmbed(c.in_chans, c.d_model, c.patch_size, who=c.arch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model)) if c.class_token else None
        #: distillation token (DeiT), after the class token, with a position
        self.dist_token = nn.Parameter(torch.zeros(1, num_extra_tokens, c.d_model)) if num_extra_tokens else None
        self.reg_token = (
            nn.Parameter(torch.zeros(1, c.num_register_tokens, c.d_model)) if c.num_register_tokens else None
        )
        #: tokens in front of the patches that carry a position (class, distillation)
        self.num_pos_prefix = int(c.class_token) + num_extra_tokens
        self.num_prefix_tokens = self.num_pos_prefix + c.num_register_tokens
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, self.num_pos_prefix + c.grid_size**2, c.d_model))
            if c.positional == "learned"
            else None
        )
        self.pos_drop = nn.Dropout(c.pos_drop_rate)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's ViT init: ``E_pos``, registers ~ N(0, 0.02²) truncated; class tokens N(0, 1e-6²); conv default."""
        self.patch_embed.proj.reset_parameters()
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.dist_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, prefix + (H/P)(W/P), d_model]``."""
        B = images.shape[0]
        patches = self.patch_embed(images)  # (B, N, D)
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        x = torch.cat([*prefix, patches], dim=1)
        if self.pos_embed is not None:
            grid = (images.shape[-2] // self.config.patch_size, images.shape[-1] // self.config.patch_size)
            x = x + self.resampled_pos_embed(grid)
        if self.reg_token is not None:
            n = self.num_pos_prefix
            x = torch.cat([x[:, :n], self.reg_token.expand(B, -1, -1), x[:, n:]], dim=1)
        out: Tensor = self.pos_drop(x)
        return out

    def resampled_pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """``E_pos`` on ``grid`` (bicubic from the stored ``image_size`` grid)."""
        assert self.pos_embed is not None
        g = self.config.grid_size
        return resample_pos_embed(
            self.pos_embed, grid, (g, g), self.num_pos_prefix, antialias=self.config.pos_embed_antialias
        )

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Resample a checkpoint's ``E_pos`` trained on another (square) grid onto this model's grid."""
        key = prefix + "pos_embed"
        theirs = state_dict.get(key)
        if self.pos_embed is not None and isinstance(theirs, Tensor) and theirs.shape != self.pos_embed.shape:
            grid_tokens = theirs.shape[1] - self.num_pos_prefix
            side = math.isqrt(max(grid_tokens, 0))
            if side * side == grid_tokens and theirs.shape[-1] == self.pos_embed.shape[-1]:
                g = self.config.grid_size
                resampled = resample_pos_embed(
                    theirs, (g, g), (side, side), self.num_pos_prefix, antialias=self.config.pos_embed_antialias
                )
                state_dict[key] = resampled  # type: ignore[index]  # load_state_dict passes its own copy
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
