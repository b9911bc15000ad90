"""EfficientNet: mobile inverted bottlenecks with squeeze-excitation, scaled in width, depth and resolution.

Paper: "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", Tan & Le, ICML 2019,
https://arxiv.org/abs/1905.11946. The baseline EfficientNet-B0 (Table 1) is a 3x3 stride-2 stem, seven stages of
MBConv blocks (the MobileNetV2 inverted residual with linear bottleneck, Sandler et al. 2018, plus
squeeze-excitation, Hu et al. 2018, §4) and a 1x1 conv to 1280 channels, pooling and a linear classifier, with the
Swish (SiLU) activation. Compound scaling (Eq. 3) multiplies the depth by ``alpha^phi`` and the width by
``beta^phi``; here ``depth_multiplier`` and ``width_multiplier`` are those factors, widths rounded to multiples of 8
and repeats rounded up as in the authors' ``round_filters``/``round_repeats``. The blocks and the scaling live in
:mod:`edifice_vision._mbconv` and :mod:`edifice_vision.configs._mbconv` (shared with ``mobilenet``).

Choices where the paper is silent, from the authors' TensorFlow code (tensorflow/tpu, models/official/efficientnet):
the squeeze width is ``se_ratio`` times the block's *input* width and uses the block's activation; stochastic
depth rises as ``rate * i / n`` over the blocks; convolutions are initialised normal with std ``sqrt(2 / fan_out)``
and the classifier uniform in ``+-1/sqrt(classes)``. Deviation: symmetric ``k // 2`` padding (timm's
``efficientnet_b*``), not TensorFlow's input-dependent "SAME" padding (timm's ``tf_efficientnet_b*``, refused by the
converter). ``feature_info`` and ``forward_intermediates`` give timm's five levels (strides 2 to 32); the final
features pass the head convolution, as in timm.
"""

from __future__ import annotations

from typing import Any

import edifice
from edifice_vision._mbconv import MBConvNet, convert_timm
from edifice_vision._timm_convert import bn_eps, timm_state_dict, weight_shape
from edifice_vision.configs.efficientnet import EfficientNetConfig

__all__ = ["EfficientNet", "from_timm"]


class EfficientNet(MBConvNet):
    """EfficientNet (Tan & Le 2019): the B0 table scaled by ``width_multiplier`` and ``depth_multiplier``."""

    config_class = EfficientNetConfig
    config: EfficientNetConfig


def from_timm(source: Any, **overrides: Any) -> EfficientNet:
    """Convert a timm ``EfficientNet`` (model or state dict) to ``efficientnet``.

    The widths and depths come from ``overrides`` (``width_multiplier``/``depth_multiplier``, timm's
    ``channel_multiplier``/``depth_multiplier``; default B0); classes, input channels and BatchNorm epsilon are read
    from the checkpoint.
    """
    who = "timm efficientnet"
    state_dict = timm_state_dict(source, who=who)
    fields = {
        "in_chans": weight_shape(state_dict, "conv_stem.weight", who=who)[1],
        "num_classes": state_dict["classifier.weight"].shape[0] if "classifier.weight" in state_dict else 0,
        "norm_eps": bn_eps(source),
    }
    config: EfficientNetConfig = edifice.config("efficientnet", **{**fields, **overrides})  # type: ignore[assignment]
    return convert_timm(EfficientNet, config, state_dict, who=who)
