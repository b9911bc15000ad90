"""Swin Transformer: self-attention inside local windows that shift between blocks, over a hierarchy of patch merges.

Paper: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", Liu, Lin, Cao, Hu, Wei, Zhang, Lin &
Guo, ICCV 2021, https://arxiv.org/abs/2103.14030. Implemented:

* §3.1 -- a patch embedding (non-overlapping ``4 x 4`` patches projected to ``C``, then LayerNorm), and *patch merging*
  in front of every later stage: the features of each ``2 x 2`` group of neighbouring patches are concatenated
  (``4C``), layer-normalised and projected to ``2C`` by a linear layer without bias;
* eq. (3) -- consecutive blocks alternate window attention (W-MSA) and shifted-window attention (SW-MSA), each in a
  pre-norm residual followed by a two-layer GELU MLP:
  ``ẑ = (S)W-MSA(LN(z)) + z``, ``z' = MLP(LN(ẑ)) + ẑ``;
* §3.2 "shifted window partitioning" -- SW-MSA cyclically shifts the map by ``(-⌊M/2⌋, -⌊M/2⌋)`` (``torch.roll``),
  attends within the ``M x M`` windows of the shifted map, and shifts back; a mask restricts each token to the tokens
  of its own sub-window (tokens that the cyclic shift brought from the opposite border are not neighbours);
* eq. (4) -- ``Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V`` with the relative position bias ``B`` read from
  a table ``B̂ ∈ R^{(2M-1) x (2M-1)}`` per head at each pair's offset ``(Δy, Δx) ∈ [-M+1, M-1]²``. The attention is
  core's :class:`~edifice.blocks.attention.Attention` through :func:`edifice.ops.sdpa`, with ``B`` plus the shift mask
  as its additive mask: the windows of one image become extra heads of one call, so the mask of each window
  broadcasts over the batch.

Where the paper is silent, the authors' code (microsoft/Swin-Transformer) and timm: LayerNorm ``ε = 1e-5``;
truncated ``N(0, 0.02²)`` for linear layers and the bias tables, zero biases, PyTorch's default for the patch
projection; a stage whose token grid (at ``image_size``) is no larger than ``M`` uses one window of the grid's size
and no shift; stochastic depth rising linearly over all blocks.

Images of other sizes (the patch size must divide them; a ``ValueError`` says so): as in the authors' detection code
and timm, a map whose sides ``M`` does not divide is padded with zeros at the bottom and right *after* the cyclic
shift and normalisation, the padded tokens take part in attention as keys (they are not masked; only the sub-window
mask of SW-MSA applies, computed on the padded map), and the output is cropped back; patch merging pads an odd side
by one. Window sizes stay those of ``image_size``.

Deviation: masked pairs get ``-inf`` (the authors' code adds ``-100``, which differs by less than ``e^-100``
relatively unless logits span a hundred).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice import ops
from edifice.blocks.attention import Attention
from edifice.blocks.ffn import FeedForward
from edifice.blocks.norms import get_norm
from edifice.errors import CheckpointError
from edifice_vision._backbone import DropPath, FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision._hierarchical import stage_dims, trunc_normal_init
from edifice_vision._timm_convert import load_converted, rename_keys, timm_state_dict, weight_shape
from edifice_vision._vit_blocks import check_image_size
from edifice_vision.configs.swin import SwinConfig

__all__ = [
    "PatchMerging",
    "Swin",
    "SwinBlock",
    "WindowAttention",
    "from_timm",
    "relative_position_index",
    "shift_mask",
    "swin_config_from_timm",
    "window_partition",
    "window_reverse",
]


def window_partition(x: Tensor, window: int) -> Tensor:
    """``[B, H, W, C] -> [B * nW, M*M, C]``: non-overlapping ``M x M`` windows, batch-major, row-major within."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_reverse(windows: Tensor, window: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, M*M, C] -> [B, H, W, C]``."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window: int, device: torch.device | None = None) -> Tensor:
    """``[M², M²]`` index into the ``(2M-1)²`` bias table of each pair's offset (row-major ``(Δy + M-1, Δx + M-1)``)."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window, device=device), torch.arange(window, device=device), indexing="ij")
    ).flatten(1)  # (2, M²): (y, x) of each token
    delta = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, M², M²) in [0, 2M-2]
    return delta[0] * (2 * window - 1) + delta[1]


def shift_mask(height: int, width: int, window: int, shift: int, device: torch.device | None = None) -> Tensor:
    """The SW-MSA mask ``[nW, M², M²]``: 0 between tokens of one sub-window, ``-inf`` across (§3.2, Fig. 4).

    On the (padded) shifted map, rows split into ``[0, H-M)``, ``[H-M, H-shift)``, ``[H-shift, H)`` and columns
    likewise; tokens attend only within their (row band, column band) region.
    """

    def bands(n: int) -> Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - window).long() + (i >= n - shift).long()  # 0, 1, 2

    region = bands(height)[:, None] * 3 + bands(width)[None, :]  # (H, W)
    labels = window_partition(region[None, :, :, None], window).squeeze(-1)  # (nW, M²)
    same = labels[:, :, None] == labels[:, None, :]
    return torch.zeros(same.shape, device=device).masked_fill(~same, float("-inf"))


class WindowAttention(Attention):
    """(S)W-MSA of eq. (4): multi-head self-attention within windows with the relative position bias ``B``."""

    def __init__(self, dim: int, n_heads: int, window: int, *, qkv_bias: bool, attn_drop: float) -> None:
        super().__init__(dim, n_heads, causal=False, bias=qkv_bias, out_bias=True, dropout=attn_drop)
        self.window_size = window  # M (core's ``window`` is its sliding window, unused here)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, n_heads))  # B̂

    def reset_parameters(self) -> None:
        """Projections as PyTorch's default; ``B̂ ~ N(0, 0.02²)`` truncated (authors' code)."""
        super().reset_parameters()
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02, a=-2.0, b=2.0)

    def relative_position_bias(self) -> Tensor:
        """``B [n_heads, M², M²]``: ``B̂`` at every pair's relative offset."""
        index = relative_position_index(self.window_size, self.relative_position_bias_table.device)
        n = self.window_size**2
        return self.relative_position_bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``x [B * nW, M², C]`` (windows batch-major), ``mask [nW, M², M²]`` for SW-MSA -> ``[B * nW, M², C]``."""
        q, k, v = self._qkv(x, mask=None, positions=None, state=None)  # (B*nW, H, N, D)
        BW, H, N, D = q.shape
        bias = self.relative_position_bias()[None]  # (1, H, N, N)
        n_windows = 1
        if mask is not None:
            n_windows = mask.shape[0]
            bias = (bias + mask[:, None].to(bias.dtype)).reshape(1, n_windows * H, N, N)  # (1, nW*H, N, N)
        # the nW windows of an image as nW*H heads, so each window's mask broadcasts over the batch
        q, k, v = (t.reshape(BW // n_windows, n_windows * H, N, D) for t in (q, k, v))
        out = ops.sdpa(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self._merge_heads(out.reshape(BW, H, N, D))


class SwinBlock(nn.Module):
    """One block of eq. (3): ``z + (S)W-MSA(LN(z))`` then ``z + MLP(LN(z))``, on ``[B, H, W, C]``."""

    def __init__(self, config: SwinConfig, dim: int, n_heads: int, window: int, shift: int, drop_path: float):
        super().__init__()
        c = config
        self.window = window
        self.shift = shift
        self.norm1 = get_norm("layernorm", dim, eps=c.norm_eps)
        self.attn = WindowAttention(dim, n_heads, window, qkv_bias=c.qkv_bias, attn_drop=c.attn_drop_rate)
        self.norm2 = get_norm("layernorm", dim, eps=c.norm_eps)
        self.mlp = FeedForward(dim, int(dim * c.mlp_ratio), activation="gelu", dropout=c.proj_drop_rate)
        self.proj_drop = nn.Dropout(c.proj_drop_rate)
        self.drop_path = DropPath(drop_path)

    def attend(self, x: Tensor) -> Tensor:
        """(S)W-MSA on the normalised map ``[B, H, W, C]``: shift, pad, partition, attend, merge, crop, unshift."""
        H, W = x.shape[1], x.shape[2]
        M, s = self.window, self.shift
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))  # cyclic shift towards the top-left (§3.2)
        pad_h, pad_w = (M - H % M) % M, (M - W % M) % M
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # zeros at the bottom and right (authors' detection code, timm)
        Hp, Wp = H + pad_h, W + pad_w
        mask = shift_mask(Hp, Wp, M, s, device=x.device) if s else None
        out = self.attn(window_partition(x, M), mask)  # (B*nW, M², C)
        x = window_reverse(out, M, Hp, Wp)[:, :H, :W]
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))  # reverse cyclic shift
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C] -> [B, H, W, C]``."""
        x = x + self.drop_path(self.proj_drop(self.attend(self.norm1(x))))
        out: Tensor = x + self.drop_path(self.proj_drop(self.mlp(self.norm2(x))))
        return out


class PatchMerging(nn.Module):
    """§3.1: each 2x2 group of neighbours concatenated (``4C``), LayerNorm, linear to ``2C`` without bias (NHWC)."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.norm = get_norm("layernorm", 4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C] -> [B, ⌈H/2⌉, ⌈W/2⌉, out_dim]`` (an odd side is padded by one)."""
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H, W = H + H % 2, W + W % 2
        # channels ordered [x(0,0), x(1,0), x(0,1), x(1,1)] by (row, column) offset, as the authors' x0..x3
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        out: Tensor = self.reduction(self.norm(x))
        return out


class SwinStage(nn.Module):
    """Patch merging (none in stage 0), then blocks alternating W-MSA and SW-MSA."""

    def __init__(self, downsample: nn.Module, blocks: list[SwinBlock]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C_in] -> [B, H', W', C_out]``."""
        out: Tensor = self.blocks(self.downsample(x))
        return out


class SwinPatchEmbed(nn.Module):
    """§3.1: ``[B, C_in, H, W] -> [B, H/P, W/P, C]`` -- each ``P x P`` patch projected, then LayerNorm."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        c = config
        self.who = c.arch
        self.patch_size = c.patch_size
        self.proj = nn.Conv2d(c.in_chans, c.d_model, c.patch_size, stride=c.patch_size)
        self.norm = get_norm("layernorm", c.d_model, eps=c.norm_eps)

    def forward(self, images: Tensor) -> Tensor:
        """Patch tokens on their grid, channels last."""
        check_image_size(self.who, images.shape[-2], images.shape[-1], self.patch_size)
        out: Tensor = self.norm(self.proj(images).permute(0, 2, 3, 1))
        return out


def stage_windows(config: SwinConfig) -> list[tuple[int, int]]:
    """``(window, shift)`` of each stage at ``image_size``: one grid-sized window and no shift when ``grid <= M``."""
    grid = config.image_size // config.patch_size
    out = []
    for i in range(len(config.depths)):
        res = -(-grid // 2**i)  # ceil: patch merging pads odd sides
        window = min(config.window_size, res)
        out.append((window, 0 if res <= config.window_size else config.window_size // 2))
    return out


class Swin(ImageBackbone):
    """Swin Transformer (Liu et al. 2021): patch embedding, stages of (S)W-MSA blocks with patch merging, LN, pool.

    Stage outputs and ``forward_features`` are channels-last ``[B, H, W, C]`` (timm's); ``forward_intermediates``
    gives ``[B, C, H, W]`` maps.
    """

    config_class = SwinConfig
    config: SwinConfig
    final_norm_last_stage_only = True

    def __init__(self, config: SwinConfig) -> None:
        super().__init__(config)
        c = config
        dims = stage_dims(c.d_model, len(c.depths))
        self.stem = SwinPatchEmbed(c)
        rates = stochastic_depth_rates(c.drop_path_rate, sum(c.depths))
        first = 0
        for i, ((window, shift), depth) in enumerate(zip(stage_windows(c), c.depths, strict=True)):
            downsample = PatchMerging(dims[i - 1], dims[i], c.norm_eps) if i > 0 else nn.Identity()
            blocks = [
                SwinBlock(c, dims[i], c.n_heads[i], window, shift if j % 2 else 0, rates[first + j])
                for j in range(depth)
            ]
            self.stages.append(SwinStage(downsample, blocks))
            self.feature_info.append(FeatureInfo(dims[i], c.patch_size * 2**i, f"stages.{i}"))
            first += depth
        self.final_norm = get_norm("layernorm", dims[-1], eps=c.norm_eps)
        self.init_head(dims[-1])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated ``N(0, 0.02²)`` linears and bias tables, zero biases, unit norms; default patch projection."""
        trunc_normal_init(self, convs=False)
        for m in self.modules():
            if isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02, a=-2.0, b=2.0)

    def pool(self, features: Tensor) -> Tensor:
        """Pool a channels-last map ``[B, H, W, C]`` over its positions (unchanged for ``global_pool=''``)."""
        if not self.global_pool:
            return features
        return features.mean((1, 2)) if self.global_pool == "avg" else features.amax((1, 2))

    def to_feature_map(self, x: Tensor, images: Tensor) -> Tensor:
        """``[B, H, W, C] -> [B, C, H, W]``."""
        return x.permute(0, 3, 1, 2)


# -- timm checkpoints --------------------------------------------------------------------------------------------------
_WHO = "timm swin"


def swin_config_from_timm(state_dict: dict[str, Tensor], **overrides: Any) -> SwinConfig:
    """The :class:`SwinConfig` of a timm (or original) Swin state dict; ``image_size`` from ``overrides`` or 224."""
    proj = weight_shape(state_dict, "patch_embed.proj.weight", who=_WHO)
    tables = {
        (int(m.group(1)), int(m.group(2))): v
        for k, v in state_dict.items()
        if (m := re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table", k))
    }
    if not tables:
        raise CheckpointError(f"{_WHO} converter: no relative_position_bias_table; is it a Swin (V1) checkpoint?")
    if any(k.endswith(("logit_scale", "cpb_mlp.fc1.weight")) for k in state_dict):
        raise CheckpointError(f"{_WHO} converter: Swin V2 checkpoints (cosine attention, CPB) are not supported")
    n_stages = max(s for s, _ in tables) + 1
    depths = tuple(len([b for s, b in tables if s == i]) for i in range(n_stages))
    fc1 = state_dict["layers.0.blocks.0.mlp.fc1.weight"]
    head = state_dict.get("head.fc.weight", state_dict.get("head.weight"))
    fields: dict[str, Any] = {
        "patch_size": proj[-1],
        "in_chans": proj[1],
        "d_model": proj[0],
        "depths": depths,
        "n_heads": tuple(tables[(i, 0)].shape[1] for i in range(n_stages)),
        "window_size": (math.isqrt(tables[(0, 0)].shape[0]) + 1) // 2,
        "mlp_ratio": fc1.shape[0] / fc1.shape[1],
        "qkv_bias": "layers.0.blocks.0.attn.qkv.bias" in state_dict,
        "num_classes": head.shape[0] if head is not None else 0,
    }
    config: SwinConfig = edifice.config("swin", **{**fields, **overrides})  # type: ignore[assignment]
    for i, (window, _) in enumerate(stage_windows(config)):
        if tables[(i, 0)].shape[0] != (2 * window - 1) ** 2:
            raise CheckpointError(
                f"{_WHO} converter: stage {i}'s bias table is for another window than {window} at "
                f"image_size={config.image_size}; pass the checkpoint's image_size (e.g. image_size=384)"
            )
    return config


def _rules(old_layout: bool) -> list[tuple[str, Any]]:
    shift = 1 if old_layout else 0  # the authors' checkpoints merge patches at the end of the stage before

    def merge(m: re.Match[str]) -> str:
        return f"stages.{int(m.group(1)) + shift}.downsample.{m.group(2)}"

    return [
        (r"patch_embed\.(proj|norm)\.(weight|bias)", r"stem.\1.\2"),
        (r"layers\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)", merge),
        (r"layers\.(\d+)\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"stages.\1.blocks.\2.\3.\4"),
        (r"layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"stages.\1.blocks.\2.attn.qkv.\3"),
        (r"layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"stages.\1.blocks.\2.attn.o_proj.\3"),
        (
            r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
            r"stages.\1.blocks.\2.attn.relative_position_bias_table",
        ),
        (r"layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"stages.\1.blocks.\2.mlp.up_proj.\3"),
        (r"layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"stages.\1.blocks.\2.mlp.down_proj.\3"),
        (r"norm\.(weight|bias)", r"final_norm.\1"),
        (r"head(?:\.fc)?\.(weight|bias)", r"head.\1"),
    ]


def from_timm(source: Any, **overrides: Any) -> Swin:
    """Convert a timm ``SwinTransformer`` (model, or state dict with ``image_size=`` its resolution) to ``swin``.

    Also takes the authors' checkpoints (patch merging at the end of a stage). timm's fused ``qkv`` is split into
    ``q_proj``/``k_proj``/``v_proj``; ``overrides`` set other config fields (e.g. ``drop_path_rate``).
    """
    state_dict = timm_state_dict(source, who=_WHO)
    if isinstance(source, nn.Module):
        embed = getattr(source, "patch_embed", None)
        img_size = getattr(embed, "img_size", None)
        if img_size is not None:
            if img_size[0] != img_size[1]:
                raise CheckpointError(f"{_WHO} converter: only square image sizes are supported, got {img_size}")
            overrides.setdefault("image_size", int(img_size[0]))
        norm = next((m for m in source.modules() if isinstance(m, nn.LayerNorm)), None)
        if norm is not None:
            overrides.setdefault("norm_eps", norm.eps)
    # buffers that old checkpoints saved; both are recomputed at forward
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    config = swin_config_from_timm(state_dict, **overrides)
    weights = rename_keys(state_dict, _rules("layers.0.downsample.reduction.weight" in state_dict), who=_WHO)
    for key in [k for k in weights if ".attn.qkv." in k]:
        q, k, v = weights.pop(key).chunk(3, dim=0)
        for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            weights[key.replace("qkv", name)] = part
    return load_converted(Swin, config, weights, who=_WHO)
