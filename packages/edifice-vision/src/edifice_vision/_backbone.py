"""The torch half of every image backbone: timm's backbone API, written once for the family.

A backbone is a ``stem``, a list of ``stages`` and a ``final_norm``, then pooling, dropout and a linear ``head``. From
those parts :class:`ImageBackbone` provides what timm users expect of any model:

* ``forward_features(images)`` -- the unpooled output of the last stage after ``final_norm``;
* ``forward_head(features, pre_logits=False)`` -- pooling, dropout and the classifier;
* ``forward_intermediates(images, indices=...)`` -- the feature maps of chosen stages, ``NCHW`` (or ``NHWC``), with
  ``feature_info`` giving each stage's channels and stride;
* ``reset_classifier(num_classes, global_pool=None)`` and ``set_grad_checkpointing()``.

A convolutional stage maps ``[B, C, H, W]`` to ``[B, C', H', W']``. A transformer "stage" (one block of a ViT) maps
tokens ``[B, prefix + N, C]``; such a backbone sets ``num_prefix_tokens`` (class and register tokens) and
``patch_stride``, and its intermediates are turned back into maps by :meth:`ImageBackbone.to_feature_map`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from edifice.model import Model
from edifice_vision.configs._image import ImageConfig

__all__ = ["DropPath", "FeatureInfo", "ImageBackbone", "drop_path", "stochastic_depth_rates"]


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """What stage ``module`` outputs: ``num_chs`` channels at ``reduction`` times smaller than the image (timm's)."""

    num_chs: int
    reduction: int
    module: str


class ImageBackbone(Model):
    """Base of the family's image models: ``stem -> stages -> final_norm -> pool -> dropout -> head``.

    Subclasses build ``self.stem``, ``self.stages`` (an ``nn.ModuleList``), ``self.final_norm``, set
    ``self.num_features`` and ``self.feature_info`` (one :class:`FeatureInfo` per stage), then call
    :meth:`init_head`. Pooling follows ``config.global_pool``; a token backbone overrides :meth:`pool` only if its
    pooling is not timm's (class token, or mean over the patch tokens).
    """

    config: ImageConfig
    #: Class/register tokens in front of the patch tokens (token backbones).
    num_prefix_tokens: int = 0
    #: Pixels per patch side (token backbones): how token grids map back to feature maps.
    patch_stride: int = 1
    #: ``final_norm`` is sized for the last stage alone (hierarchical backbones, timm's): ``forward_intermediates``
    #: with ``norm`` normalises only the last stage's map, and a ``stop_early`` run ends unnormalised.
    final_norm_last_stage_only: bool = False

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config)
        self.stem: nn.Module = nn.Identity()
        self.stages = nn.ModuleList()
        self.final_norm: nn.Module = nn.Identity()
        self.num_features = 0
        self.feature_info: list[FeatureInfo] = []
        self.global_pool = config.global_pool
        self.head_drop = nn.Dropout(config.drop_rate)
        self.head: nn.Module = nn.Identity()

    # -- head --------------------------------------------------------------------------------------------------------
    def init_head(self, num_features: int) -> None:
        """Set the pooled feature size and build the classifier for ``config.num_classes`` (none for 0)."""
        self.num_features = num_features
        self.head = nn.Linear(num_features, self.config.num_classes) if self.config.num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (0: none), optionally with another pooling."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"{self.arch}: num_classes must be an int >= 0, got {num_classes!r}")
        if global_pool is not None:
            if global_pool not in type(self.config).pool_choices:
                choices = ", ".join(repr(c) for c in type(self.config).pool_choices)
                raise ValueError(f"{self.arch}: global_pool must be one of {choices}, got {global_pool!r}")
            self.global_pool = global_pool
        device = next(self.parameters()).device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        """The classifier module (``nn.Identity`` when there is none)."""
        return self.head

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` (pooled features ``[B, num_features]`` without a head)."""
        self.check_inputs(images=images)
        return self.forward_head(self.forward_features(images))

    def forward_features(self, images: Tensor) -> Tensor:
        """The last stage's output after ``final_norm`` (a feature map, or tokens for a token backbone)."""
        x = self.stem(images)
        extra = self.stage_inputs(images)
        for stage in self.stages:
            x = self._run_stage(stage, x, **extra)
        out: Tensor = self.final_norm(x)
        return out

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool ``features``, apply dropout, and the classifier unless ``pre_logits``."""
        x: Tensor = self.head_drop(self.pool(features))
        if pre_logits:
            return x
        logits: Tensor = self.head(x)
        return logits

    def pool(self, features: Tensor) -> Tensor:
        """``[B, C, H, W]`` or tokens ``[B, prefix + N, C]`` -> ``[B, C]`` by ``global_pool`` (unchanged for '')."""
        pool = self.global_pool
        if not pool:
            return features
        if features.dim() == 4:
            return features.mean((2, 3)) if pool == "avg" else features.amax((2, 3))
        if pool == "token":
            return features[:, 0]
        patches = features[:, self.num_prefix_tokens :]
        return patches.mean(1) if pool == "avg" else patches.amax(1)

    def forward_intermediates(
        self,
        images: Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Feature maps of the chosen stages (timm's API): ``indices`` an int (the last n) or stage indices.

        Returns ``(final_features, intermediates)``, or only the intermediates with ``intermediates_only``.
        ``norm`` applies ``final_norm`` to every intermediate; ``stop_early`` skips the stages after the last one
        asked for (the final features are then those of that stage).
        """
        self.check_inputs(images=images)
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"{self.arch}: output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        chosen = self._stage_indices(indices)
        last = max(chosen) if stop_early else len(self.stages) - 1
        x = self.stem(images)
        extra = self.stage_inputs(images)
        maps = []
        for i, stage in enumerate(self.stages[: last + 1]):
            x = self._run_stage(stage, x, **extra)
            if i in chosen:
                normed = norm and (i == len(self.stages) - 1 or not self.final_norm_last_stage_only)
                out = self.to_feature_map(self.final_norm(x) if normed else x, images)
                maps.append(out.permute(0, 2, 3, 1) if output_fmt == "NHWC" else out)
        if intermediates_only:
            return maps
        if self.final_norm_last_stage_only and last < len(self.stages) - 1:
            return x, maps
        return self.final_norm(x), maps

    def to_feature_map(self, x: Tensor, images: Tensor) -> Tensor:
        """A stage output as ``[B, C, H, W]``: maps unchanged; tokens without their prefix, on the patch grid."""
        if x.dim() == 4:
            return x
        grid_h, grid_w = images.shape[-2] // self.patch_stride, images.shape[-1] // self.patch_stride
        patches = x[:, self.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid_h, grid_w)

    def stage_inputs(self, images: Tensor) -> dict[str, Tensor | tuple[Tensor, ...]]:
        """Keyword inputs every stage receives beside ``x`` (none; a ViT with 2-D RoPE passes the grid's angles)."""
        return {}

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _run_stage(self, stage: nn.Module, x: Tensor, **extra: Tensor | tuple[Tensor, ...]) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            out: Tensor = checkpoint(stage, x, use_reentrant=False, **extra)  # type: ignore[call-overload]
            return out
        plain: Tensor = stage(x, **extra)
        return plain

    def _stage_indices(self, indices: int | Sequence[int] | None) -> set[int]:
        n = len(self.stages)
        if indices is None:
            return set(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"{self.arch}: indices={indices} asks for the last {indices} of {n} stages")
            return set(range(n - indices, n))
        chosen = set()
        for index in indices:
            if not -n <= index < n:
                raise ValueError(f"{self.arch}: stage index {index} out of range for {n} stages")
            chosen.add(index % n)
        return chosen


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): zero a sample's residual branch with probability ``rate``, rescaled."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """:func:`drop_path` as a module (identity in eval mode or at rate 0)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        """Drop whole samples' branches at ``rate`` while training."""
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def stochastic_depth_rates(rate: float, depth: int) -> list[float]:
    """Per-block drop-path rates rising linearly from 0 to ``rate`` over ``depth`` blocks (timm's schedule)."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]
