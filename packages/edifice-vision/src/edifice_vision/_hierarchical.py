"""Parts the hierarchical backbones share (ConvNeXt, Swin, FocalNet): channels-first norms and scales, their init.

* :class:`LayerNorm2d` -- core's :class:`~edifice.blocks.norms.LayerNorm` over the channels of a ``[B, C, H, W]`` map
  (the "channels_first" LayerNorm of ConvNeXt's stem and downsampling layers, and of FocalNet throughout);
* :class:`LayerScale2d` -- CaiT's per-channel gain ``diag(γ)`` (Touvron et al. 2021, §2.1) on a channels-first map;
* :func:`trunc_normal_init` -- ``W ~ N(0, 0.02²)`` truncated at ±2 (absolute, as timm's ``trunc_normal_``), zero biases,
  unit/zero norms: the initialisation of the three papers' released code;
* :func:`stage_dims` -- the widths ``C, 2C, 4C, ...`` of stages that double the channels at each patch merging.

The three backbones set ``final_norm_last_stage_only``: as in timm, their final norm is sized for the last stage, so
``forward_intermediates(norm=True)`` normalises only the last stage's map.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edifice.blocks.norms import LayerNorm

__all__ = [
    "DownsampleStage",
    "LayerNorm2d",
    "LayerScale2d",
    "assert_intermediates_match_timm",
    "stage_dims",
    "trunc_normal_init",
]


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channel dimension of ``[B, C, H, W]`` (each pixel's ``C`` values normalised), in fp32."""

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DownsampleStage(nn.Module):
    """A stage of a hierarchical backbone: a downsampling layer (identity in the first stage), then its blocks."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H', W']``."""
        out: Tensor = self.blocks(self.downsample(x))
        return out


class LayerScale2d(nn.Module):
    """Per-channel gain ``x * γ`` on ``[B, C, H, W]``, ``γ`` initialised to ``init`` (CaiT §2.1)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.init = init
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def reset_parameters(self) -> None:
        """``γ = init`` in every channel."""
        nn.init.constant_(self.gamma, self.init)

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of ``x [B, C, H, W]``."""
        return x * self.gamma.view(1, -1, 1, 1)


@torch.no_grad()
def trunc_normal_init(module: nn.Module, *, std: float = 0.02, convs: bool = True) -> None:
    """``N(0, std²)`` truncated to ``[-2, 2]`` for every ``nn.Linear`` (and ``nn.Conv2d`` if ``convs``), zero biases;
    norms to unit gain and zero shift; every other submodule with ``reset_parameters`` (LayerScale, relative-position
    tables) resets itself."""
    for m in module.modules():
        if isinstance(m, nn.Linear) or (convs and isinstance(m, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d | nn.LayerNorm):
            m.reset_parameters()
        elif m is not module and not list(m.children()) and callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()  # type: ignore[operator]


def stage_dims(d_model: int, n_stages: int) -> tuple[int, ...]:
    """``(C, 2C, 4C, ...)``: the width of each stage when every patch merging doubles the channels."""
    return tuple(d_model * 2**i for i in range(n_stages))


@torch.no_grad()
def assert_intermediates_match_timm(ours: nn.Module, theirs: nn.Module, images: Tensor, *, atol: float = 1e-5) -> None:
    """``forward_intermediates`` agrees with timm's for every option pair: chosen indices, ``norm`` (the last stage
    only), ``stop_early`` (unnormalised final features) -- the parity checks of the hierarchical backbones."""
    n = len(ours.stages)  # type: ignore[arg-type]
    for kwargs in ({"norm": True}, {"indices": [0], "stop_early": True}, {"indices": 1, "norm": True}):
        final, maps = ours.forward_intermediates(images, **kwargs)  # type: ignore[operator]
        timm_final, timm_maps = theirs.forward_intermediates(images, **kwargs)  # type: ignore[operator]
        torch.testing.assert_close(final, timm_final, atol=atol, rtol=1e-5)
        assert len(maps) == len(timm_maps) <= n
        for a, b in zip(maps, timm_maps, strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)
