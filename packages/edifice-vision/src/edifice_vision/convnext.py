"""ConvNeXt: a pure ConvNet modernised step by step towards the design of a vision Transformer, in timm's backbone API.

Paper: "A ConvNet for the 2020s", Liu, Mao, Wu, Feichtenhofer, Darrell & Xie, CVPR 2022,
https://arxiv.org/abs/2201.03545. The paper states its design as a sequence of changes to a ResNet (§2) rather than
numbered equations; each is implemented where cited:

* §2.2 macro design -- a "patchify" stem (a ``p x p`` convolution of stride ``p = 4``, then LayerNorm) and the stage
  compute ratio (3, 3, 9, 3);
* §2.3/§2.5 -- a depthwise ``7 x 7`` convolution (groups = channels), moved up to the start of the block;
* §2.4 -- the inverted bottleneck: ``C -> 4C -> C`` pointwise layers (``nn.Linear`` on channels-last maps);
* §2.6 micro design -- GELU, a single activation and a single LayerNorm per block, and separate downsampling layers
  (LayerNorm then a ``2 x 2`` stride-2 convolution) between stages;
* §A.1 -- layer scale (Touvron et al. 2021) ``γ ⊙ F(x)`` with ``γ = 1e-6`` and stochastic depth on every block.

The block is ``x + DropPath(γ ⊙ W_2 GELU(W_1 LN(DWConv_7x7(x))))``. The head pools, normalises (LayerNorm) and
classifies, in that order (the authors' code; timm's ``NormMlpClassifierHead``).

ConvNeXt V2 (``version='v2'``; Woo et al. 2023, "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
Autoencoders", https://arxiv.org/abs/2301.00808, §3.3) adds Global Response Normalization after the GELU:
eq. (1) ``G(X)_i = ||X_i||`` (L2 norm of channel ``i`` over the spatial positions), eq. (2)
``N(G(X))_i = G(X)_i / mean_j G(X)_j``, eq. (3) ``X_i + γ_i X_i N(G(X))_i + β_i`` (with ``γ = β = 0`` at init, and
``ε = 1e-6`` in the denominator as in the authors' code). V2's released models drop layer scale
(``layer_scale_init=None``), which stays a separate field.

Choices where the paper is silent, from the authors' code (facebookresearch/ConvNeXt) and timm: LayerNorm ``ε = 1e-6``;
``N(0, 0.02²)`` truncated initialisation for every convolution and linear layer with zero biases; the classifier's
initial weights and biases multiplied by ``head_init_scale``. Stage 0 has no downsampling layer (the stem's stride
serves), so ``forward_intermediates`` gives the four stage outputs at strides ``p, 2p, 4p, 8p`` with timm's
``feature_info``; ``final_norm`` is the identity (the head's LayerNorm follows the pooling).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

import edifice
from edifice.blocks.ffn import FeedForward
from edifice.blocks.norms import get_norm
from edifice.errors import CheckpointError
from edifice_vision._backbone import DropPath, FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision._hierarchical import DownsampleStage, LayerNorm2d, trunc_normal_init
from edifice_vision._timm_convert import load_converted, rename_keys, timm_state_dict, weight_shape
from edifice_vision._vit_blocks import LayerScale
from edifice_vision.configs.convnext import ConvNeXtConfig

__all__ = ["ConvNeXt", "ConvNeXtBlock", "GlobalResponseNorm", "convnext_config_from_timm", "from_timm"]


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN on channels-last ``[B, H, W, C]`` (Woo et al. 2023, eqs. 1-3); identity at init."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))  # γ
        self.bias = nn.Parameter(torch.zeros(dim))  # β

    def reset_parameters(self) -> None:
        """``γ = β = 0``: the block starts as V1's."""
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``X + γ X N(G(X)) + β``."""
        gx = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)  # eq. (1): (B, 1, 1, C)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)  # eq. (2): divisive normalisation across channels
        out: Tensor = x + self.weight * (x * nx) + self.bias  # eq. (3), with the residual
        return out


class ConvNeXtBlock(nn.Module):
    """``x + DropPath(γ ⊙ W_2 [GRN] GELU(W_1 LN(DWConv(x))))`` on ``[B, C, H, W]`` (§2.3-2.6, Fig. 4)."""

    def __init__(self, config: ConvNeXtConfig, dim: int, drop_path: float) -> None:
        super().__init__()
        c = config
        k = c.kernel_size
        self.conv_dw = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)  # depthwise k x k (§2.3, §2.5)
        self.norm = get_norm("layernorm", dim, eps=c.norm_eps)  # one LayerNorm per block (§2.6)
        self.mlp = FeedForward(dim, int(c.mlp_ratio * dim), activation="gelu")  # inverted bottleneck (§2.4)
        self.grn: nn.Module = GlobalResponseNorm(self.mlp.up_proj.out_features) if c.version == "v2" else nn.Identity()
        self.ls: nn.Module = LayerScale(dim, c.layer_scale_init) if c.layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        h = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        h = self.mlp.down_proj(self.grn(self.mlp.act(self.mlp.up_proj(h))))  # C -> 4C -> GELU (-> GRN) -> C
        out: Tensor = x + self.drop_path(self.ls(h).permute(0, 3, 1, 2))
        return out


class ConvNeXt(ImageBackbone):
    """ConvNeXt (Liu et al. 2022; V2's GRN with ``version='v2'``): stem, four stages, pool-LayerNorm-linear head."""

    config_class = ConvNeXtConfig
    config: ConvNeXtConfig
    final_norm_last_stage_only = True

    def __init__(self, config: ConvNeXtConfig) -> None:
        super().__init__(config)
        c = config
        p = c.patch_size
        self.stem = nn.Sequential(nn.Conv2d(c.in_chans, c.dims[0], p, stride=p), LayerNorm2d(c.dims[0], eps=c.norm_eps))
        rates = stochastic_depth_rates(c.drop_path_rate, sum(c.depths))
        first = 0
        for i, (depth, dim) in enumerate(zip(c.depths, c.dims, strict=True)):
            downsample: nn.Module = (
                nn.Sequential(LayerNorm2d(c.dims[i - 1], eps=c.norm_eps), nn.Conv2d(c.dims[i - 1], dim, 2, stride=2))
                if i > 0
                else nn.Identity()
            )
            blocks: list[nn.Module] = [ConvNeXtBlock(c, dim, rates[first + j]) for j in range(depth)]
            self.stages.append(DownsampleStage(downsample, blocks))
            self.feature_info.append(FeatureInfo(dim, p * 2**i, f"stages.{i}"))
            first += depth
        self.head_norm = get_norm("layernorm", c.dims[-1], eps=c.norm_eps)  # after the pooling (authors' head)
        self.init_head(c.dims[-1])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated ``N(0, 0.02²)`` convolutions and linears, zero biases; the head scaled by ``head_init_scale``."""
        trunc_normal_init(self)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(self.config.head_init_scale)
                self.head.bias.mul_(self.config.head_init_scale)

    def pool(self, features: Tensor) -> Tensor:
        """Global pooling then the head's LayerNorm (``[B, C]``; over the channels of the map without pooling)."""
        pooled = super().pool(features)
        if pooled.dim() == 4:
            out: Tensor = self.head_norm(pooled.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return out
        normed: Tensor = self.head_norm(pooled)
        return normed


# -- timm checkpoints --------------------------------------------------------------------------------------------------
_WHO = "timm convnext"


def convnext_config_from_timm(state_dict: dict[str, Tensor], **overrides: Any) -> ConvNeXtConfig:
    """The :class:`ConvNeXtConfig` of a timm ConvNeXt state dict (depths, widths, kernel, stem, GRN, layer scale)."""
    stem = weight_shape(state_dict, "stem.0.weight", who=_WHO)
    if "stem.2.weight" in state_dict or stem[-1] != stem[-2]:
        raise CheckpointError(f"{_WHO} converter: only the 'patch' stem is supported (not timm's overlapping stems)")
    if any(k.startswith(("norm_pre.", "head.pre_logits.")) for k in state_dict):
        raise CheckpointError(f"{_WHO} converter: head_norm_first and MLP heads (head_hidden_size) are not supported")
    stages = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"stages\.(\d+)\.", k))})
    depths = tuple(
        len({m.group(1) for k in state_dict if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k))}) for i in stages
    )
    dw = [state_dict[f"stages.{i}.blocks.0.conv_dw.weight"] for i in stages]
    if len({w.shape[-1] for w in dw}) != 1:
        raise CheckpointError(f"{_WHO} converter: per-stage kernel sizes are not supported")
    fc1 = state_dict["stages.0.blocks.0.mlp.fc1.weight"]
    fields: dict[str, Any] = {
        "depths": depths,
        "dims": tuple(w.shape[0] for w in dw),
        "patch_size": stem[-1],
        "kernel_size": dw[0].shape[-1],
        "mlp_ratio": fc1.shape[0] / fc1.shape[1],
        "version": "v2" if "stages.0.blocks.0.mlp.grn.weight" in state_dict else "v1",
        "layer_scale_init": 1e-6 if "stages.0.blocks.0.gamma" in state_dict else None,
        "in_chans": stem[1],
        "num_classes": state_dict["head.fc.weight"].shape[0] if "head.fc.weight" in state_dict else 0,
    }
    return edifice.config("convnext", **{**fields, **overrides})  # type: ignore[return-value]


def _linear(m: re.Match[str]) -> str:
    return f"{m.group(1)}.mlp.{'up_proj' if m.group(2) == '1' else 'down_proj'}.{m.group(3)}"


_RULES: list[tuple[str, Any]] = [
    (r"stem\.(0|1)\.(weight|bias)", r"stem.\1.\2"),
    (r"(stages\.\d+)\.downsample\.(0|1)\.(weight|bias)", r"\1.downsample.\2.\3"),
    (r"(stages\.\d+\.blocks\.\d+)\.(conv_dw|norm)\.(weight|bias)", r"\1.\2.\3"),
    (r"(stages\.\d+\.blocks\.\d+)\.mlp\.fc(1|2)\.(weight|bias)", _linear),
    (r"(stages\.\d+\.blocks\.\d+)\.mlp\.grn\.(weight|bias)", r"\1.grn.\2"),
    (r"(stages\.\d+\.blocks\.\d+)\.gamma", r"\1.ls.gamma"),
    (r"head\.norm\.(weight|bias)", r"head_norm.\1"),
    (r"head\.fc\.(weight|bias)", r"head.\1"),
]


def from_timm(source: Any, **overrides: Any) -> ConvNeXt:
    """Convert a timm ``ConvNeXt`` (model or state dict; e.g. ``convnext_tiny``, ``convnextv2_atto``) to ``convnext``.

    The architecture is read off the weights; ``overrides`` set other config fields (e.g. ``drop_path_rate``). The
    pointwise layers of timm's ``conv_mlp`` models (1x1 convolutions) become the MLP's linear layers.
    """
    state_dict = timm_state_dict(source, who=_WHO)
    if isinstance(source, nn.Module):
        norm = next((m for m in source.modules() if isinstance(m, nn.LayerNorm)), None)
        if norm is not None:
            overrides.setdefault("norm_eps", norm.eps)
    config = convnext_config_from_timm(state_dict, **overrides)
    weights = rename_keys(state_dict, _RULES, who=_WHO)
    weights = {k: v.flatten(1) if k.endswith("_proj.weight") else v for k, v in weights.items()}  # 1x1 conv -> linear
    return load_converted(ConvNeXt, config, weights, who=_WHO)
