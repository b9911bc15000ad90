"""The convolutional blocks the family's CNNs share: conv-BN-act, squeeze-excitation and the inverted residual.

* :class:`ConvNormAct` -- ``act(BN(conv(x)))``, the unit of every CNN here (ResNet, MobileNet, EfficientNet);
* :class:`SqueezeExcite` -- channel gating of Hu et al. 2018 (arXiv:1709.01507), Eqs. (2)-(4):
  ``z = mean_{h,w} x``, ``s = gate(W_2 act(W_1 z))``, ``y = s * x``;
* :class:`InvertedResidual` -- the MobileNetV2 bottleneck (Sandler et al. 2018, arXiv:1801.04381, Table 1):
  1x1 expansion with activation, ``k x k`` depthwise with activation, an optional squeeze-excitation (MobileNetV3,
  Howard et al. 2019, arXiv:1905.02244 §5.3; EfficientNet's MBConv, Tan & Le 2019, arXiv:1905.11946 §4), and a
  *linear* 1x1 projection (no activation: the "linear bottleneck" of Sandler et al. §3.2), with the identity shortcut
  between the bottlenecks when the shapes allow (§3.3). With expansion 1 there is no expansion convolution (the
  depthwise-separable block of MobileNetV1, the first block of MobileNetV2 and EfficientNet).

:func:`conv_activation` names the activations these papers use beyond core's: ``relu6`` (MobileNetV2) and
``hard_swish``/``hard_sigmoid`` (MobileNetV3 §5.2, ``h-swish(x) = x ReLU6(x + 3) / 6``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from edifice.blocks.activations import get_activation
from edifice_vision._backbone import DropPath

__all__ = ["ConvNormAct", "InvertedResidual", "SqueezeExcite", "conv_activation", "init_cnn"]

_HARD = {"relu6": nn.ReLU6, "hard_swish": nn.Hardswish, "hardswish": nn.Hardswish, "hard_sigmoid": nn.Hardsigmoid}


def conv_activation(name: str | None) -> nn.Module:
    """The activation module named ``name`` (core's names plus relu6, hard_swish, hard_sigmoid); ``None``: identity."""
    if name is None:
        return nn.Identity()
    factory = _HARD.get(name.lower())
    return factory() if factory is not None else get_activation(name)


class ConvNormAct(nn.Module):
    """``act(BN(conv(x)))`` with "same" padding ``k // 2`` for odd ``k``; ``act=None`` is the linear unit."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.act = conv_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``."""
        out: Tensor = self.act(self.bn(self.conv(x)))
        return out


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018, Eqs. 2-4) with 1x1 convolutions as the two fully connected layers."""

    def __init__(self, channels: int, reduced: int, *, act: str = "relu", gate: str = "sigmoid") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)  # W_1 (with bias, as in the authors' code)
        self.act = conv_activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1)  # W_2
        self.gate = conv_activation(gate)

    def forward(self, x: Tensor) -> Tensor:
        """``x * gate(W_2 act(W_1 mean_hw(x)))``: one gate per sample and channel."""
        z = x.mean((2, 3), keepdim=True)  # Eq. (2): squeeze, [B, C, 1, 1]
        s: Tensor = self.gate(self.expand(self.act(self.reduce(z))))  # Eq. (3): excitation
        return x * s  # Eq. (4): rescale


class InvertedResidual(nn.Module):
    """MBConv: ``x + project(SE(depthwise(expand(x))))`` (the shortcut when stride 1 and widths agree).

    ``mid_channels`` is the expanded width (``in_channels`` with ``expand=False``); ``se_channels = 0`` leaves out
    the squeeze-excitation; ``se_act``/``se_gate`` are its inner activation and gate (EfficientNet: the block's
    activation and sigmoid; MobileNetV3: ReLU and hard sigmoid).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        mid_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand: bool = True,
        se_channels: int = 0,
        act: str = "relu6",
        se_act: str = "relu",
        se_gate: str = "sigmoid",
        drop_path: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not expand and mid_channels != in_channels:
            raise ValueError(f"InvertedResidual: without expansion mid_channels must be {in_channels}")
        self.has_skip = stride == 1 and in_channels == out_channels
        self.expand = ConvNormAct(in_channels, mid_channels, 1, act=act, eps=eps) if expand else nn.Identity()
        self.depthwise = ConvNormAct(
            mid_channels, mid_channels, kernel_size, stride=stride, groups=mid_channels, act=act, eps=eps
        )
        self.se = SqueezeExcite(mid_channels, se_channels, act=se_act, gate=se_gate) if se_channels else nn.Identity()
        self.project = ConvNormAct(mid_channels, out_channels, 1, act=None, eps=eps)  # linear bottleneck
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``."""
        y: Tensor = self.project(self.se(self.depthwise(self.expand(x))))
        if self.has_skip:
            y = self.drop_path(y) + x
        return y


@torch.no_grad()
def init_cnn(model: nn.Module, *, conv: str, linear: str = "default") -> None:
    """Initialise every convolution, BatchNorm and Linear of ``model`` by one of the papers' schemes.

    ``conv``: ``"he_fan_out"`` -- He et al. 2015 normal with ``std = sqrt(2 / (k^2 C_out))`` (ResNet, torchvision and
    timm); ``"he_fan_in"`` -- the same over ``k^2 C_in / groups`` (DenseNet's released code); ``"tf_fan_out"`` -- the
    TensorFlow reference of MobileNetV3/EfficientNet, ``std = sqrt(2 / (k^2 C_out / groups))`` (a depthwise filter's
    fan-out is ``k^2``). ``linear``: ``"default"`` (PyTorch's), ``"zero_bias"`` (PyTorch's weight, zero bias) or
    ``"tf_uniform"`` (``U(+-1 / sqrt(out_features))``, zero bias). BatchNorm: unit scale, zero shift, fresh statistics.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            fan = {
                "he_fan_out": k * m.out_channels,
                "he_fan_in": k * m.in_channels // m.groups,
                "tf_fan_out": k * m.out_channels // m.groups,
            }[conv]
            m.weight.normal_(0.0, math.sqrt(2.0 / fan))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
        elif isinstance(m, nn.Linear):
            if linear == "tf_uniform":
                bound = 1.0 / math.sqrt(m.out_features)
                m.weight.uniform_(-bound, bound)
            else:
                m.reset_parameters()
            if linear != "default" and m.bias is not None:
                m.bias.zero_()
