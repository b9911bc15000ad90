"""The torch half of the inverted-residual networks (MobileNetV2/V3, EfficientNet): one backbone over a block table.

:class:`MBConvNet` builds a 3x3 stride-2 stem, the blocks that :meth:`MBConvConfig.levels` resolves from the table
(grouped into feature levels by output stride, timm's ``feature_info``), and the 1x1 head convolution: before pooling
with BatchNorm (MobileNetV2, EfficientNet) or after pooling with a bias and no BatchNorm (MobileNetV3's "efficient
last stage", Howard et al. 2019 §5.1). :func:`convert_timm` maps timm's ``EfficientNet``/``MobileNetV3`` weights.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar

from torch import Tensor, nn

from edifice.errors import CheckpointError
from edifice_vision._backbone import FeatureInfo, ImageBackbone
from edifice_vision._conv_blocks import ConvNormAct, InvertedResidual, conv_activation, init_cnn
from edifice_vision._timm_convert import load_converted, rename_keys
from edifice_vision.configs._mbconv import Block, MBConvConfig

__all__ = ["MBConvNet", "convert_timm"]

M = TypeVar("M", bound="MBConvNet")


class MBConvNet(ImageBackbone):
    """Stem, inverted-residual levels, head convolution, pool, dropout, linear (the papers' last rows)."""

    config: MBConvConfig

    def __init__(self, config: MBConvConfig) -> None:
        super().__init__(config)
        c = config
        self.head_after_pool = c.head_after_pool
        levels = c.levels()
        stem = ConvNormAct(c.in_chans, c.stem_width, 3, stride=2, act=c.act, eps=c.norm_eps)
        reduction = 2
        if levels[0][0].stride > 1:  # the first block strides: the stem's map is a feature level of its own (timm's)
            self.stages.append(nn.Sequential(stem))
            self.feature_info.append(FeatureInfo(c.stem_width, 2, "stages.0"))
        else:
            self.stem = stem
        total, index = sum(len(level) for level in levels), 0
        for level in levels:
            blocks = []
            for block in level:
                # Stochastic depth rising linearly over the blocks, as the authors' code (rate * i / n).
                blocks.append(self.make_block(block, c.drop_path_rate * index / total))
                index += 1
            reduction *= level[0].stride
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(level[-1].out_channels, reduction, f"stages.{len(self.stages) - 1}"))
        last = levels[-1][-1].out_channels
        if self.head_after_pool:
            self.head_conv: nn.Module = nn.Conv2d(last, c.head_width, 1)
            self.head_act = conv_activation(c.act)
        else:
            self.head_conv = ConvNormAct(last, c.head_width, 1, act=c.act, eps=c.norm_eps)
        self.init_head(c.head_width)
        self.reset_parameters()

    def make_block(self, block: Block, drop_path: float) -> nn.Module:
        """One ``ds``/``ir`` inverted residual or ``cn`` conv-BN-act of the table."""
        c = self.config
        if block.kind == "cn":
            return ConvNormAct(block.in_channels, block.out_channels, block.kernel, stride=block.stride,
                               act=block.act, eps=c.norm_eps)  # fmt: skip
        return InvertedResidual(
            block.in_channels,
            block.out_channels,
            mid_channels=block.mid_channels,
            kernel_size=block.kernel,
            stride=block.stride,
            expand=block.kind == "ir",
            se_channels=block.se_channels,
            act=block.act,
            se_act=c.se_act or block.act,
            se_gate=c.se_gate,
            drop_path=drop_path,
            eps=c.norm_eps,
        )

    def reset_parameters(self) -> None:
        """The authors' TensorFlow initialisers: normal ``sqrt(2 / fan_out)`` convs, ``U(+-1/sqrt(out))`` linear."""
        init_cnn(self, conv="tf_fan_out", linear="tf_uniform")

    # -- the head convolution --------------------------------------------------------------------------------------
    def forward_features(self, images: Tensor) -> Tensor:
        """The last level's map, through the head convolution unless it follows the pooling."""
        x = super().forward_features(images)
        if self.head_after_pool:
            return x
        out: Tensor = self.head_conv(x)
        return out

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, (MobileNetV3) head convolution and activation, dropout, classifier."""
        if not self.head_after_pool:
            return super().forward_head(features, pre_logits)
        pooled = self.pool(features)
        x: Tensor = self.head_act(self.head_conv(pooled[:, :, None, None]))[:, :, 0, 0]
        if pre_logits:
            return x
        logits: Tensor = self.head(self.head_drop(x))
        return logits

    def forward_intermediates(
        self, images: Tensor, indices: int | Sequence[int] | None = None, **kwargs: Any
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's: the feature levels; the final features pass the head convolution only if the last level ran."""
        out = super().forward_intermediates(images, indices, **kwargs)
        if isinstance(out, list) or self.head_after_pool:
            return out
        final, maps = out
        ran_last = not kwargs.get("stop_early") or max(self._stage_indices(indices)) == len(self.stages) - 1
        return (self.head_conv(final) if ran_last else final), maps


# -- timm checkpoints ----------------------------------------------------------------------------------------------
_SE = {"se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand"}
_IR = {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "depthwise.conv", "bn2": "depthwise.bn", **_SE,
       "conv_pwl": "project.conv", "bn3": "project.bn"}  # fmt: skip
_DS = {"conv_dw": "depthwise.conv", "bn1": "depthwise.bn", "conv_pw": "project.conv", "bn2": "project.bn", **_SE}
_CN = {"conv": "conv", "bn1": "bn"}


def convert_timm(model_class: type[M], config: MBConvConfig, state_dict: dict[str, Tensor], *, who: str) -> M:
    """Map timm ``EfficientNet``/``MobileNetV3`` weights (``blocks.<stage>.<block>.*``) onto ``model_class(config)``."""
    levels = config.levels()
    stem_level = levels[0][0].stride > 1
    ours = [(i + stem_level, k, b.kind) for i, level in enumerate(levels) for k, b in enumerate(level)]
    theirs = sorted({(int(m.group(1)), int(m.group(2))) for key in state_dict
                     if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", key))})  # fmt: skip
    if len(theirs) != len(ours):
        raise CheckpointError(
            f"{who} converter: the checkpoint has {len(theirs)} blocks, {config.arch} with width_multiplier="
            f"{config.width_multiplier}, depth_multiplier={config.depth_multiplier} has {len(ours)}; pass the "
            "multipliers (and arch_def) of the timm variant"
        )
    flat = {pair: j for j, pair in enumerate(theirs)}
    stem = "stages.0.0" if stem_level else "stem"

    def block_key(m: re.Match[str]) -> str | None:
        level, k, kind = ours[flat[(int(m.group(1)), int(m.group(2)))]]
        table = {"ir": _IR, "ds": _DS, "cn": _CN}[kind]
        module, leaf = m.group(3).rsplit(".", 1)
        if module not in table:
            raise CheckpointError(f"{who} converter: no place for {m.group(0)!r} in a {kind!r} block")
        return f"stages.{level}.{k}.{table[module]}.{leaf}"

    rules: list[tuple[str, Any]] = [
        (r"conv_stem\.(.+)", rf"{stem}.conv.\1"),
        (r"bn1\.(.+)", rf"{stem}.bn.\1"),
        (r"blocks\.(\d+)\.(\d+)\.(.+)", block_key),
        (r"conv_head\.(.+)", r"head_conv.\1" if config.head_after_pool else r"head_conv.conv.\1"),
        (r"bn2\.(.+)", r"head_conv.bn.\1"),
        (r"classifier\.(.+)", r"head.\1"),
    ]
    weights = rename_keys(state_dict, rules, who=who)
    return load_converted(model_class, config, weights, who=who)
