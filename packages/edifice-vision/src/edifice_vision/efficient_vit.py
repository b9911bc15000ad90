"""``efficient_vit``: EfficientViT (Liu et al., CVPR 2023), a sandwich of convolutions around cascaded group attention.

Liu, Peng, Zheng, Yang, Hu & Yuan (2023), "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group
Attention", https://arxiv.org/abs/2305.07027 (timm's ``efficientvit_msra``; the authors' code is
https://github.com/microsoft/Cream/tree/main/EfficientViT).

* §3.1, eq. (1), the sandwich layout: ``X_{i+1} = Π^N Φ^F(Γ(Π^N Φ^F(X_i)))`` -- each block is a depthwise 3x3
  convolution (token interaction) and a feed-forward layer ``Φ^F`` (1x1 conv, ReLU, 1x1 conv, width ``mlp_ratio``),
  then one attention layer ``Γ``, then again a depthwise convolution and a feed-forward layer, each residual
  (:class:`EfficientViTBlock`).
* §3.2, eq. (2)-(3), cascaded group attention: head ``j`` sees only the ``j``-th channel split ``X_ij`` of the input,
  plus the previous head's output, ``X'_ij = X_ij + X~_i(j-1)`` (eq. 3), and
  ``X~_ij = Attn(X'_ij W^Q_ij, X'_ij W^K_ij, X'_ij W^V_ij)``; the heads are concatenated and projected,
  ``X~_{i+1} = Concat[X~_ij] W^P_i`` (eq. 2). The query goes through a depthwise convolution (kernel ``kernels[j]``)
  before attending ("token interaction", §3.2), and the scores carry a learned bias per head and relative offset
  ``(|Δy|, |Δx|)`` (LeViT's attention bias). The attention itself is :func:`edifice.ops.sdpa` with the bias as an
  additive mask (:class:`CascadedGroupAttention`).
* §3.3, parameter reallocation: queries and keys of ``key_dim`` channels, values of ``width / heads`` channels.
* Attention runs in local windows of ``window_size`` (padded at the map's right and bottom edges, as the authors'
  code), :class:`LocalWindowAttention`; between stages an inverted-residual patch merging with squeeze-excitation,
  between two residual DWConv/FFN pairs (§3.1, Fig. 2); a stride-16 overlapping convolutional stem; global average
  pooling and a BatchNorm + linear head.

Every convolution is followed by BatchNorm (the released code's ``Conv2d_BN``, here the family's
:class:`~edifice_vision._conv_blocks.ConvNormAct`). Deviations, both options whose defaults are the paper's:
``patch_size`` sets the stem's stride (``log2(patch_size)`` stride-2 convolutions of widths ``C / 2^k``; the paper's
stem is 16), so tiny configs keep maps larger than one pixel; ``drop_path_rate`` drops residual branches (the
authors' ``Residual`` has the same rate argument, unused by their models).
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice import ops
from edifice_vision._backbone import DropPath, FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision._conv_blocks import ConvNormAct, SqueezeExcite
from edifice_vision._timm_convert import bn_eps, load_converted, rename_keys, timm_state_dict, weight_shape
from edifice_vision.configs.efficient_vit import EfficientViTConfig, se_width

__all__ = ["CascadedGroupAttention", "EfficientViT", "EfficientViTBlock", "LocalWindowAttention", "from_timm"]


def conv_bn(
    c_in: int,
    c_out: int,
    kernel: int = 1,
    *,
    stride: int = 1,
    groups: int = 1,
    eps: float,
    act: str | None = None,
    zero_gain: bool = False,
) -> ConvNormAct:
    """``BN(conv(x))`` (then ``act``); ``zero_gain`` starts the BN gain at 0, so a residual branch starts silent."""
    m = ConvNormAct(c_in, c_out, kernel, stride=stride, groups=groups, act=act, eps=eps)
    m.zero_gain = zero_gain  # type: ignore[assignment]  # read by EfficientViT.reset_parameters
    return m


class Residual(nn.Module):
    """``x + DropPath(m(x))``."""

    def __init__(self, m: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.m = m
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        out: Tensor = x + self.drop_path(self.m(x))
        return out


class ConvMlp(nn.Module):
    """The feed-forward layer ``Φ^F``: ``BN(conv1x1(ReLU(BN(conv1x1(x)))))`` (the output BN gain starts at 0)."""

    def __init__(self, dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.pw1 = conv_bn(dim, hidden, eps=eps, act="relu")
        self.pw2 = conv_bn(hidden, dim, eps=eps, zero_gain=True)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        out: Tensor = self.pw2(self.pw1(x))
        return out


class CascadedGroupAttention(nn.Module):
    """Eqs. (2)-(3) on one ``r x r`` window ``[B, C, r, r]``: head ``j`` attends over ``X_j + X~_{j-1}``."""

    attention_bias_idxs: Tensor

    def __init__(
        self, dim: int, key_dim: int, num_heads: int, resolution: int, kernels: tuple[int, ...], eps: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = dim // num_heads
        self.resolution = resolution
        split = dim // num_heads
        #: W^Q_ij, W^K_ij, W^V_ij of eq. (2), one 1x1 conv per head (on that head's split only).
        self.qkvs = nn.ModuleList(conv_bn(split, 2 * key_dim + self.val_dim, eps=eps) for _ in range(num_heads))
        #: The depthwise "token interaction" on each head's queries.
        self.dws = nn.ModuleList(
            conv_bn(key_dim, key_dim, kernels[j], groups=key_dim, eps=eps) for j in range(num_heads)
        )
        #: W^P_i of eq. (2), after a ReLU on the concatenated heads (the authors' code).
        self.proj = nn.Sequential(nn.ReLU(), conv_bn(self.val_dim * num_heads, dim, eps=eps, zero_gain=True))
        # A bias per head and relative offset (|dy|, |dx|) of the r x r window (LeViT), indexed per query/key pair.
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", self.bias_index(resolution), persistent=False)

    @staticmethod
    def bias_index(r: int, device: torch.device | str | None = None) -> Tensor:
        """``[N, N]`` indices into a head's bias table: the offset ``(|dy|, |dx|)`` of each query/key pair."""
        points = list(itertools.product(range(r), range(r)))
        idxs = [abs(a[0] - b[0]) * r + abs(a[1] - b[1]) for a in points for b in points]
        return torch.tensor(idxs, dtype=torch.long, device=device).view(len(points), len(points))

    def reset_parameters(self) -> None:
        """Zero attention biases (the released code's init); the convolutions keep their own."""
        nn.init.zeros_(self.attention_biases)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, r, r] -> [B, C, r, r]``."""
        B, _, H, W = x.shape
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)
        splits = x.chunk(self.num_heads, dim=1)  # X_ij of eq. (2)
        outs = []
        feat = splits[0]
        for j, (qkv, dw) in enumerate(zip(self.qkvs, self.dws, strict=True)):
            if j > 0:
                feat = feat + splits[j]  # eq. (3): X'_ij = X_ij + X~_i(j-1)
            q, k, v = qkv(feat).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q = dw(q)
            # one head: [B, 1, N, D] with N = H * W tokens
            q, k, v = (t.flatten(2).transpose(1, 2).unsqueeze(1) for t in (q, k, v))
            head = ops.sdpa(q, k, v, attn_mask=bias[j].to(q.dtype))  # softmax(q k^T / sqrt(d) + bias) v
            feat = head.squeeze(1).transpose(1, 2).reshape(B, self.val_dim, H, W)  # X~_ij
            outs.append(feat)
        out: Tensor = self.proj(torch.cat(outs, 1))  # eq. (2): Concat[X~_ij] W^P
        return out


class LocalWindowAttention(nn.Module):
    """Cascaded group attention inside ``window x window`` windows (the map padded at the bottom/right to fit)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int, kernels: tuple[int, ...], eps: float):
        super().__init__()
        self.window = window
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, window, kernels, eps)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        B, C, H, W = x.shape
        ws = self.window
        if ws == H and ws == W:
            return self.attn(x)  # type: ignore[no-any-return]
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        x = F.pad(x, (0, pad_r, 0, pad_b))
        nh, nw = (H + pad_b) // ws, (W + pad_r) // ws
        # [B, C, nh*ws, nw*ws] -> [B * nh * nw, C, ws, ws]
        windows = x.view(B, C, nh, ws, nw, ws).permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, C, ws, ws)
        out: Tensor = self.attn(windows).view(B, nh, nw, C, ws, ws).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(B, C, nh * ws, nw * ws)[:, :, :H, :W].contiguous()


class EfficientViTBlock(nn.Module):
    """Eq. (1): residual DWConv and FFN, residual cascaded group attention, residual DWConv and FFN."""

    def __init__(self, config: EfficientViTConfig, stage: int, window: int, drop_path: float) -> None:
        super().__init__()
        c, eps = config, config.norm_eps
        dim = c.embed_dim[stage]
        hidden = int(dim * c.mlp_ratio)
        self.dw0 = Residual(conv_bn(dim, dim, 3, groups=dim, eps=eps, zero_gain=True), drop_path)
        self.ffn0 = Residual(ConvMlp(dim, hidden, eps), drop_path)
        self.mixer = Residual(
            LocalWindowAttention(dim, c.key_dim[stage], c.num_heads[stage], window, c.kernels, eps), drop_path
        )
        self.dw1 = Residual(conv_bn(dim, dim, 3, groups=dim, eps=eps, zero_gain=True), drop_path)
        self.ffn1 = Residual(ConvMlp(dim, hidden, eps), drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        out: Tensor = self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))
        return out


class PatchMerging(nn.Module):
    """Inverted-residual downsampling: 1x1 conv (x4), ReLU, 3x3/2 depthwise, ReLU, squeeze-excitation, 1x1 conv."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        hidden = 4 * dim
        self.conv1 = conv_bn(dim, hidden, eps=eps, act="relu")
        self.conv2 = conv_bn(hidden, hidden, 3, stride=2, groups=hidden, eps=eps, act="relu")
        self.se = SqueezeExcite(hidden, se_width(hidden))
        self.conv3 = conv_bn(hidden, out_dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C', ceil(H/2), ceil(W/2)]``."""
        out: Tensor = self.conv3(self.se(self.conv2(self.conv1(x))))
        return out


class EfficientViTStage(nn.Module):
    """A stage: (for later stages) DWConv/FFN, patch merging, DWConv/FFN; then sandwich blocks."""

    def __init__(self, downsample: nn.Module | None, blocks: list[EfficientViTBlock]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C', H', W']``."""
        out: Tensor = self.blocks(self.downsample(x))
        return out


def _dw_ffn(dim: int, mlp_ratio: float, eps: float) -> nn.Sequential:
    """The residual DWConv + FFN pair around a patch merging (its DWConv BN gain starts at 1, as released)."""
    return nn.Sequential(
        Residual(conv_bn(dim, dim, 3, groups=dim, eps=eps)), Residual(ConvMlp(dim, int(dim * mlp_ratio), eps))
    )


class NormLinear(nn.Module):
    """The classifier: BatchNorm1d, dropout, linear."""

    def __init__(self, dim: int, num_classes: int, drop: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.drop = nn.Dropout(drop)
        self.linear = nn.Linear(dim, num_classes)

    def reset_parameters(self) -> None:
        """Unit BatchNorm; ``N(0, 0.02²)`` truncated linear weights and zero bias (the released code)."""
        self.bn.reset_parameters()
        nn.init.trunc_normal_(self.linear.weight, std=0.02, a=-2.0, b=2.0)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, dim] -> [B, num_classes]``."""
        out: Tensor = self.linear(self.drop(self.bn(x)))
        return out


class EfficientViT(ImageBackbone):
    """EfficientViT (Liu et al. 2023): conv stem, stages of sandwich blocks, average pooling, BN-linear head."""

    config_class = EfficientViTConfig
    config: EfficientViTConfig

    def __init__(self, config: EfficientViTConfig) -> None:
        super().__init__(config)
        c, eps = config, config.norm_eps
        n_convs = int(math.log2(c.patch_size))
        widths = [c.embed_dim[0] // 2 ** (n_convs - 1 - k) for k in range(n_convs)]
        self.stem = nn.Sequential(
            *(
                conv_bn(w_in, w_out, 3, stride=2, eps=eps, act="relu" if k < n_convs - 1 else None)
                for k, (w_in, w_out) in enumerate(zip([c.in_chans, *widths[:-1]], widths, strict=True))
            )
        )
        sides = c.resolutions(c.image_size)
        rates = iter(stochastic_depth_rates(c.drop_path_rate, sum(c.depths)))
        reduction = c.patch_size
        for i, (dim, depth) in enumerate(zip(c.embed_dim, c.depths, strict=True)):
            downsample = None
            if i > 0:
                prev = c.embed_dim[i - 1]
                downsample = nn.Sequential()
                downsample.add_module("res1", _dw_ffn(prev, c.mlp_ratio, eps))
                downsample.add_module("patchmerge", PatchMerging(prev, dim, eps))
                downsample.add_module("res2", _dw_ffn(dim, c.mlp_ratio, eps))
                reduction *= 2
            window = min(c.window_size[i], sides[i])
            blocks = [EfficientViTBlock(c, i, window, next(rates)) for _ in range(depth)]
            self.stages.append(EfficientViTStage(downsample, blocks))
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{i}"))
        self.head_drop = nn.Dropout(0.0)  # the dropout sits inside the head, after its BatchNorm
        self.init_head(c.embed_dim[-1])
        self.reset_parameters()

    def init_head(self, num_features: int) -> None:
        """The BatchNorm + linear classifier for ``config.num_classes`` (none for 0)."""
        super().init_head(num_features)
        if self.config.num_classes:
            self.head = NormLinear(num_features, self.config.num_classes, self.config.drop_rate)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised BatchNorm + linear classifier for ``num_classes`` (0: none)."""
        super().reset_classifier(num_classes, global_pool)
        if num_classes:
            device = next(self.parameters()).device
            self.head = NormLinear(self.num_features, num_classes, self.config.drop_rate).to(device)
            self.head.reset_parameters()

    def reset_parameters(self) -> None:
        """The released code's init: PyTorch's default convolutions, unit BatchNorm except the branches that start
        silent (the blocks' DWConvs, every FFN's output and the attention projection: gain 0), zero attention biases,
        a truncated-normal classifier."""
        super().reset_parameters()
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, ConvNormAct) and getattr(m, "zero_gain", False):
                    nn.init.zeros_(m.bn.weight)


# -- timm checkpoints -------------------------------------------------------------------------------------------------
_WHO = "timm efficientvit_msra"
_RULES: list[tuple[str, Any]] = [
    (r"patch_embed\.conv(\d+)\.(.+)", lambda m: f"stem.{int(m.group(1)) - 1}.{m.group(2)}"),
    (r"(.+)\.patchmerge\.se\.fc1\.(.+)", r"\1.patchmerge.se.reduce.\2"),
    (r"(.+)\.patchmerge\.se\.fc2\.(.+)", r"\1.patchmerge.se.expand.\2"),
    (r".+\.attention_bias_idxs", lambda m: None),
    (r"(stages\..+|head\..+)", r"\1"),
]


def efficient_vit_config_from_timm(source: Any, state_dict: dict[str, Tensor], **overrides: Any) -> EfficientViTConfig:
    """The :class:`EfficientViTConfig` a timm ``EfficientVitMsra`` checkpoint fits (read off its weights)."""
    sd = state_dict
    in_chans = weight_shape(sd, "patch_embed.conv1.conv.weight", who=_WHO)[1]
    n_convs = len({k.split(".")[1] for k in sd if k.startswith("patch_embed.conv")})
    n = len({int(m.group(1)) for k in sd if (m := re.match(r"stages\.(\d+)\.blocks\.", k))})
    depths = tuple(len({k.split(".")[3] for k in sd if k.startswith(f"stages.{i}.blocks.")}) for i in range(n))
    attn = [f"stages.{i}.blocks.0.mixer.m.attn." for i in range(n)]
    heads = tuple(len({k.split(".")[8] for k in sd if k.startswith(a + "qkvs.")}) for a in attn)
    windows = tuple(math.isqrt(sd[a + "attention_biases"].shape[1]) for a in attn)
    widest = max(range(n), key=lambda i: heads[i])
    fields: dict[str, Any] = {
        "in_chans": in_chans,
        "patch_size": 2**n_convs,
        "embed_dim": tuple(sd[f"stages.{i}.blocks.0.dw0.m.conv.weight"].shape[0] for i in range(n)),
        "depths": depths,
        "num_heads": heads,
        "key_dim": tuple(sd[a + "dws.0.conv.weight"].shape[0] for a in attn),
        "window_size": windows,
        "kernels": tuple(sd[f"{attn[widest]}dws.{j}.conv.weight"].shape[-1] for j in range(heads[widest])),
        "num_classes": sd["head.linear.weight"].shape[0] if "head.linear.weight" in sd else 0,
        "norm_eps": bn_eps(source),
    }
    fields["mlp_ratio"] = sd["stages.0.blocks.0.ffn0.m.pw1.conv.weight"].shape[0] / fields["embed_dim"][0]
    if isinstance(source, nn.Module):
        fields["image_size"] = int(source.img_size)  # type: ignore[arg-type]
        fields["window_size"] = tuple(
            source.get_submodule(f"stages.{i}.blocks.0.mixer.m").window_resolution for i in range(n)
        )
    return edifice.config("efficient_vit", **{**fields, **overrides})  # type: ignore[return-value]


def from_timm(source: Any, **overrides: Any) -> EfficientViT:
    """Convert a timm ``EfficientVitMsra`` (``efficientvit_m0`` .. ``m5``; model or state dict) to ``efficient_vit``.

    The architecture is read off the weights (for a state dict, the windows off the attention-bias tables at
    ``image_size`` 224; pass ``image_size``/``window_size`` for others); ``overrides`` set other config fields.
    """
    state_dict = timm_state_dict(source, who=_WHO)
    config = efficient_vit_config_from_timm(source, state_dict, **overrides)
    weights = rename_keys(state_dict, _RULES, who=_WHO)
    model = load_converted(EfficientViT, config, weights, who=_WHO)
    for m in model.modules():  # the bias index is no weight: rebuild it off the meta device
        if isinstance(m, CascadedGroupAttention):
            m.attention_bias_idxs = m.bias_index(m.resolution, m.attention_biases.device)
    return model
