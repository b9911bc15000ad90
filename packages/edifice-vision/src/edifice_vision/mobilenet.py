"""MobileNetV2 and MobileNetV3-Large: inverted residuals with linear bottlenecks, and their searched successor.

Papers: "MobileNets" (Howard et al. 2017, https://arxiv.org/abs/1704.04861) factorise a convolution into a
depthwise ``k x k`` and a pointwise 1x1 convolution (§3.1). "MobileNetV2: Inverted Residuals and Linear
Bottlenecks" (Sandler et al. 2018, https://arxiv.org/abs/1801.04381) wraps it as 1x1 expansion (factor t, ReLU6),
3x3 depthwise (ReLU6) and a *linear* 1x1 projection, with the shortcut between the narrow bottlenecks (Table 1,
§3.2-3.3), stacked by Table 2. "Searching for MobileNetV3" (Howard et al. 2019, https://arxiv.org/abs/1905.02244)
adds squeeze-excitation gated by the hard sigmoid, the hard-swish ``x ReLU6(x + 3) / 6`` (§5.2) in the later layers,
and moves the last 1x1 convolution after the pooling (§5.1), Table 1 (Large). ``version`` picks V2 or V3; the
blocks are :class:`edifice_vision._conv_blocks.InvertedResidual` (shared with ``efficientnet``).

Choices where the papers are silent follow the authors' TensorFlow code as timm reproduces it: V3's squeeze width is
``make_divisible(exp_size / 4, 8)`` with ReLU inside; its stem stays 16 wide below alpha = 0.75; V2's head widens
with alpha > 1 only. Weights start as in the TensorFlow reference (normal ``sqrt(2 / fan_out)`` convolutions).
``feature_info``/``forward_intermediates`` give timm's five levels (strides 2 to 32).
"""

from __future__ import annotations

from typing import Any

import edifice
from edifice_vision._mbconv import MBConvNet, convert_timm
from edifice_vision._timm_convert import bn_eps, timm_state_dict, weight_shape
from edifice_vision.configs.mobilenet import MobileNetConfig

__all__ = ["MobileNet", "from_timm", "from_timm_v2"]


class MobileNet(MBConvNet):
    """MobileNetV2 (``version='v2'``) or MobileNetV3-Large (``'v3'``), scaled by ``width_multiplier``."""

    config_class = MobileNetConfig
    config: MobileNetConfig


def _convert(source: Any, version: str, overrides: dict[str, Any]) -> MobileNet:
    who = f"timm mobilenet{version}"
    state_dict = timm_state_dict(source, who=who)
    fields: dict[str, Any] = {
        "version": version,
        "in_chans": weight_shape(state_dict, "conv_stem.weight", who=who)[1],
        "num_classes": state_dict["classifier.weight"].shape[0] if "classifier.weight" in state_dict else 0,
        "norm_eps": bn_eps(source),
    }
    if version == "v3" and "conv_head.weight" in state_dict:
        fields["head_channels"] = state_dict["conv_head.weight"].shape[0]
    config: MobileNetConfig = edifice.config("mobilenet", **{**fields, **overrides})  # type: ignore[assignment]
    return convert_timm(MobileNet, config, state_dict, who=who)


def from_timm(source: Any, **overrides: Any) -> MobileNet:
    """Convert a timm ``MobileNetV3`` (large; model or state dict) to ``mobilenet`` with ``version='v3'``.

    Pass timm's ``channel_multiplier``/``depth_multiplier`` as ``width_multiplier``/``depth_multiplier``.
    """
    return _convert(source, "v3", overrides)


def from_timm_v2(source: Any, **overrides: Any) -> MobileNet:
    """Convert a timm MobileNetV2 (its ``EfficientNet`` class; model or state dict) to ``mobilenet``, ``'v2'``."""
    return _convert(source, "v2", overrides)
