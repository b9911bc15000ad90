"""FocalNet: focal modulation -- aggregate context first, then modulate each query with it -- in place of attention.

Paper: "Focal Modulation Networks", Yang, Li, Dai, Yuan & Gao, NeurIPS 2022, https://arxiv.org/abs/2203.11926.
Focal modulation (eq. 3) is ``y_i = q(x_i) ⊙ m(i, X)``, with the modulator ``m`` built in three steps (§3.2):

* eq. (4), hierarchical contextualisation -- from ``Z^0 = f_z(X)`` (a linear layer), ``L`` levels
  ``Z^l = GeLU(DWConv_{k_l}(Z^{l-1}))`` of depthwise convolutions with growing kernels ``k_l = k + 2(l-1)`` (receptive
  fields from short to long range), and a global level ``Z^{L+1} = GeLU(AvgPool(Z^L))``;
* eq. (5), gated aggregation -- ``Z^out = Σ_{l=1}^{L+1} G^l ⊙ Z^l`` with spatial, per-level gates
  ``G = f_g(X) ∈ R^{H x W x (L+1)}`` (a linear layer, no squashing);
* eq. (6), the modulator -- ``M = h(Z^out)``, a linear (1x1) layer that mixes the channels, and the output
  ``y = q(x) ⊙ M`` (eq. 7) followed by an output projection.

``f_z``, ``q`` and ``f_g`` are one linear layer with ``2C + L + 1`` outputs, as in the authors' code
(microsoft/FocalNet). The block is Swin's with focal modulation for attention: ``x + DropPath(γ_1 FM(LN(x)))``, then
``x + DropPath(γ_2 MLP(LN(x)))``; stages are joined by stride-2 patch embeddings (2x2 convolution + LayerNorm) that
double the width, after a stride-4 stem; a final LayerNorm, average pooling and the classifier close the network.

Options of the large models, all from the authors' code and off by default: ``post_norm`` (LayerNorm after the
modulation and the MLP instead of before), ``post_norm_in_modulation`` (LayerNorm on ``q ⊙ M``),
``normalize_modulator`` (``Z^out / (L + 1)``), ``layer_scale``, and overlapping 7x7/3x3 downsampling
(``overlap_down``).

Layout and initialisation follow timm's refactor of the authors' code (fully convolutional, ``[B, C, H, W]``
throughout: ``f``, ``h`` and the output projection are 1x1 convolutions, every norm a channels-first LayerNorm, the
downsampling at the start of each stage): LayerNorm ``ε = 1e-5``, truncated ``N(0, 0.02²)`` convolutions and linears
with zero biases. The feed-forward is core's GELU MLP applied channels-last.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice.blocks.ffn import FeedForward
from edifice.errors import CheckpointError
from edifice_vision._backbone import DropPath, FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision._hierarchical import DownsampleStage, LayerNorm2d, LayerScale2d, stage_dims, trunc_normal_init
from edifice_vision._timm_convert import load_converted, rename_keys, timm_state_dict, weight_shape
from edifice_vision.configs.focalnet import FocalNetConfig

__all__ = ["FocalModulation", "FocalNet", "FocalNetBlock", "focalnet_config_from_timm", "from_timm"]


class FocalModulation(nn.Module):
    """``y = proj(q(x) ⊙ h(Σ_l G^l ⊙ Z^l))`` on ``[B, C, H, W]`` (eqs. 4-7)."""

    def __init__(self, config: FocalNetConfig, dim: int, level: int, window: int) -> None:
        super().__init__()
        c = config
        self.level = level
        self.f = nn.Conv2d(dim, 2 * dim + level + 1, 1)  # q(x), Z^0 = f_z(x) and the L + 1 gates f_g(x)
        self.focal_layers = nn.ModuleList()
        for lvl in range(level):
            k = c.focal_factor * lvl + window
            self.focal_layers.append(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False))  # DWConv_{k_l}
        self.h = nn.Conv2d(dim, dim, 1)  # the modulator's channel mixing (eq. 6)
        self.norm: nn.Module = LayerNorm2d(dim, eps=c.norm_eps) if c.post_norm_in_modulation else nn.Identity()
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(c.proj_drop_rate)
        self.normalize = c.normalize_modulator

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        C = x.shape[1]
        q, ctx, gates = torch.split(self.f(x), [C, C, self.level + 1], dim=1)  # (B, C|C|L+1, H, W)
        ctx_all = torch.zeros_like(ctx)
        for lvl, conv in enumerate(self.focal_layers):
            ctx = F.gelu(conv(ctx))  # eq. (4): Z^l = GeLU(DWConv(Z^{l-1}))
            ctx_all = ctx_all + ctx * gates[:, lvl : lvl + 1]  # eq. (5): G^l ⊙ Z^l
        ctx_global = F.gelu(ctx.mean((2, 3), keepdim=True))  # Z^{L+1} = GeLU(AvgPool(Z^L))
        ctx_all = ctx_all + ctx_global * gates[:, self.level :]
        if self.normalize:
            ctx_all = ctx_all / (self.level + 1)
        out = self.norm(q * self.h(ctx_all))  # eqs. (6)-(7): q(x) ⊙ h(Z^out)
        result: Tensor = self.proj_drop(self.proj(out))
        return result


class FocalNetBlock(nn.Module):
    """``x + DropPath(γ_1 FM(LN(x)))``, ``x + DropPath(γ_2 MLP(LN(x)))`` (post-norm: LN after FM and MLP)."""

    def __init__(self, config: FocalNetConfig, dim: int, level: int, window: int, drop_path: float) -> None:
        super().__init__()
        c = config

        def norm(on: bool) -> nn.Module:
            return LayerNorm2d(dim, eps=c.norm_eps) if on else nn.Identity()

        def scale() -> nn.Module:
            return LayerScale2d(dim, c.layer_scale) if c.layer_scale is not None else nn.Identity()

        self.norm1 = norm(not c.post_norm)
        self.modulation = FocalModulation(c, dim, level, window)
        self.norm1_post = norm(c.post_norm)
        self.ls1 = scale()
        self.norm2 = norm(not c.post_norm)
        self.mlp = FeedForward(dim, int(dim * c.mlp_ratio), activation="gelu", dropout=c.proj_drop_rate)
        self.mlp_drop = nn.Dropout(c.proj_drop_rate)
        self.norm2_post = norm(c.post_norm)
        self.ls2 = scale()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        x = x + self.drop_path(self.ls1(self.norm1_post(self.modulation(self.norm1(x)))))
        h = self.mlp_drop(self.mlp(self.norm2(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)  # channels-last MLP
        out: Tensor = x + self.drop_path(self.ls2(self.norm2_post(h)))
        return out


class PatchEmbed2d(nn.Module):
    """A strided convolution (kernel = stride, or 7x7/3x3 overlapping) then a channels-first LayerNorm."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, *, overlap: bool, eps: float) -> None:
        super().__init__()
        kernel, padding = ({4: (7, 2), 2: (3, 1)}[stride]) if overlap else (stride, 0)
        self.proj = nn.Conv2d(in_chans, out_chans, kernel, stride=stride, padding=padding)
        self.norm = LayerNorm2d(out_chans, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``."""
        out: Tensor = self.norm(self.proj(x))
        return out


class FocalNet(ImageBackbone):
    """FocalNet (Yang et al. 2022): patch embedding, stages of focal-modulation blocks, LayerNorm, pool, linear."""

    config_class = FocalNetConfig
    config: FocalNetConfig
    final_norm_last_stage_only = True

    def __init__(self, config: FocalNetConfig) -> None:
        super().__init__(config)
        c = config
        dims = stage_dims(c.d_model, len(c.depths))
        self.stem = PatchEmbed2d(c.in_chans, dims[0], c.patch_size, overlap=c.overlap_down, eps=c.norm_eps)
        rates = stochastic_depth_rates(c.drop_path_rate, sum(c.depths))
        first = 0
        for i, depth in enumerate(c.depths):
            downsample: nn.Module = (
                PatchEmbed2d(dims[i - 1], dims[i], 2, overlap=c.overlap_down, eps=c.norm_eps)
                if i > 0
                else nn.Identity()
            )
            blocks: list[nn.Module] = [
                FocalNetBlock(c, dims[i], c.focal_levels[i], c.focal_windows[i], rates[first + j]) for j in range(depth)
            ]
            self.stages.append(DownsampleStage(downsample, blocks))
            self.feature_info.append(FeatureInfo(dims[i], c.patch_size * 2**i, f"stages.{i}"))
            first += depth
        self.final_norm = LayerNorm2d(dims[-1], eps=c.norm_eps)
        self.init_head(dims[-1])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated ``N(0, 0.02²)`` convolutions and linears, zero biases, unit norms, LayerScale at its init."""
        trunc_normal_init(self)


# -- timm checkpoints --------------------------------------------------------------------------------------------------
_WHO = "timm focalnet"


def focalnet_config_from_timm(state_dict: dict[str, Tensor], **overrides: Any) -> FocalNetConfig:
    """The :class:`FocalNetConfig` of a timm FocalNet state dict (widths, depths, levels, kernels, norms)."""
    stem = weight_shape(state_dict, "stem.proj.weight", who=_WHO)
    if any(k.startswith(("head.pre_logits", "head.norm")) for k in state_dict):
        raise CheckpointError(f"{_WHO} converter: MLP heads (head_hidden_size) are not supported")
    stages = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k))})
    depths = tuple(
        len({m.group(1) for k in state_dict if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", k))}) for i in stages
    )
    levels = tuple(
        len(
            {
                m.group(1)
                for k in state_dict
                if (m := re.match(rf"layers\.{i}\.blocks\.0\.modulation\.focal_layers\.(\d+)\.", k))
            }
        )
        for i in stages
    )
    kernels = [
        [state_dict[f"layers.{i}.blocks.0.modulation.focal_layers.{lvl}.0.weight"].shape[-1] for lvl in range(n)]
        for i, n in zip(stages, levels, strict=True)
    ]
    factor = next((k[1] - k[0] for k in kernels if len(k) > 1), 2)
    overlap = stem[-1] == 7
    fc1 = state_dict["layers.0.blocks.0.mlp.fc1.weight"]
    fields: dict[str, Any] = {
        "patch_size": 4 if overlap else stem[-1],
        "in_chans": stem[1],
        "d_model": stem[0],
        "depths": depths,
        "focal_levels": levels,
        "focal_windows": tuple(k[0] for k in kernels),
        "focal_factor": factor,
        "mlp_ratio": fc1.shape[0] / fc1.shape[1],
        "overlap_down": overlap,
        "post_norm": "layers.0.blocks.0.norm1_post.weight" in state_dict,
        "post_norm_in_modulation": "layers.0.blocks.0.modulation.norm.weight" in state_dict,
        "layer_scale": 1e-4 if "layers.0.blocks.0.ls1.gamma" in state_dict else None,
        "num_classes": state_dict["head.fc.weight"].shape[0] if "head.fc.weight" in state_dict else 0,
    }
    return edifice.config("focalnet", **{**fields, **overrides})  # type: ignore[return-value]


_BLOCK = r"layers\.(\d+)\.blocks\.(\d+)\."
_RULES: list[tuple[str, Any]] = [
    (r"stem\.(proj|norm)\.(weight|bias)", r"stem.\1.\2"),
    (r"layers\.(\d+)\.downsample\.(proj|norm)\.(weight|bias)", r"stages.\1.downsample.\2.\3"),
    (_BLOCK + r"(norm1|norm2|norm1_post|norm2_post)\.(weight|bias)", r"stages.\1.blocks.\2.\3.\4"),
    (_BLOCK + r"(ls1|ls2)\.gamma", r"stages.\1.blocks.\2.\3.gamma"),
    (_BLOCK + r"modulation\.(f|h|proj|norm)\.(weight|bias)", r"stages.\1.blocks.\2.modulation.\3.\4"),
    (_BLOCK + r"modulation\.focal_layers\.(\d+)\.0\.weight", r"stages.\1.blocks.\2.modulation.focal_layers.\3.weight"),
    (_BLOCK + r"mlp\.fc1\.(weight|bias)", r"stages.\1.blocks.\2.mlp.up_proj.\3"),
    (_BLOCK + r"mlp\.fc2\.(weight|bias)", r"stages.\1.blocks.\2.mlp.down_proj.\3"),
    (r"norm\.(weight|bias)", r"final_norm.\1"),
    (r"head\.fc\.(weight|bias)", r"head.\1"),
]


def from_timm(source: Any, **overrides: Any) -> FocalNet:
    """Convert a timm ``FocalNet`` (model or state dict; e.g. ``focalnet_tiny_srf``) to ``focalnet``.

    The architecture is read off the weights (pass ``normalize_modulator=True`` for a state dict of a model built
    with it: no weight shows it); timm's 1x1-convolution MLP becomes core's linear MLP.
    """
    state_dict = timm_state_dict(source, who=_WHO)
    if isinstance(source, nn.Module):
        modulation = next((m for m in source.modules() if type(m).__name__ == "FocalModulation"), None)
        if modulation is not None:
            overrides.setdefault("normalize_modulator", bool(getattr(modulation, "normalize_modulator", False)))
            overrides.setdefault("focal_factor", int(getattr(modulation, "focal_factor", 2)))
        norm = next((m for m in source.modules() if isinstance(m, nn.LayerNorm)), None)
        if norm is not None:
            overrides.setdefault("norm_eps", norm.eps)
    config = focalnet_config_from_timm(state_dict, **overrides)
    weights = rename_keys(state_dict, _RULES, who=_WHO)
    weights = {k: v.flatten(1) if k.endswith("_proj.weight") and ".mlp." in k else v for k, v in weights.items()}
    return load_converted(FocalNet, config, weights, who=_WHO)
