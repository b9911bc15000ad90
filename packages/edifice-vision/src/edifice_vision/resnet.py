"""ResNet: deep residual learning with identity shortcuts, in timm's backbone API.

Paper: "Deep Residual Learning for Image Recognition", He, Zhang, Ren & Sun, CVPR 2016,
https://arxiv.org/abs/1512.03385. Each block learns a residual ``y = F(x, {W_i}) + x`` (Eq. 1), with a projection
shortcut ``y = F(x, {W_i}) + W_s x`` where the width or resolution changes (Eq. 2, option B of §3.3), and a ReLU after
the addition. ``F`` is two 3x3 convolutions (the basic block of ResNet-18/34) or the 1x1-3x3-1x1 bottleneck whose
last convolution widens by 4 (ResNet-50/101/152, Fig. 5), each convolution followed by BatchNorm (§3.4). The
network is Table 1: ``conv1`` (7x7, stride 2), then ``conv2_x`` (3x3 max pool, stride 2, and the first stage's
blocks), ``conv3_x`` .. ``conv5_x`` (stride 2 in each first block), global average pool and a linear classifier.

``stages`` are Table 1's rows, so ``forward_intermediates`` gives the five maps at strides 2, 4, 8, 16, 32 with
timm's ``feature_info``; ``stem`` is unused (``conv1`` is ``stages[0]``).

Deviations and choices, each as in timm and torchvision (and the authors' later Torch code, fb.resnet.torch):
* the bottleneck strides in its 3x3 convolution, not the first 1x1 (ResNet "v1.5"/ResNet-B of He et al. 2019,
  arXiv:1812.01187 §4.1), which is what every released ImageNet checkpoint uses;
* options ``stem_type='deep'`` (three 3x3 convolutions, ResNet-C) and ``avg_down`` (average-pool shortcut, ResNet-D)
  of the same §4.1, off by default; ``'deep_tiered'`` is timm's ResNet-T stem (inner widths 3w/8, w/2);
* initialisation: He et al. 2015 normal over the fan-out for convolutions (as in the authors' code), unit/zero
  BatchNorm, and the last BatchNorm scale of each residual branch zeroed (``zero_init_last``, Goyal et al. 2017,
  arXiv:1706.02677 §5.1) so that every block starts as the identity;
* stochastic depth (Huang et al. 2016) on the residual branch, linear in depth (``drop_path_rate``).
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

import edifice
from edifice.errors import CheckpointError
from edifice_vision._backbone import DropPath, FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision._conv_blocks import ConvNormAct, init_cnn
from edifice_vision._timm_convert import bn_eps, load_converted, rename_keys, timm_state_dict, weight_shape
from edifice_vision.configs.resnet import EXPANSION, ResNetConfig

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "ResidualBlock", "from_timm", "resnet_config_from_timm"]


class Shortcut(nn.Module):
    """The projection shortcut ``W_s x`` (Eq. 2): a strided 1x1 conv + BN, or (ResNet-D) 2x2 average pool first."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, avg_down: bool, eps: float) -> None:
        super().__init__()
        pooled = avg_down and stride > 1
        self.pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if pooled else nn.Identity()
        self.proj = ConvNormAct(in_channels, out_channels, 1, stride=1 if avg_down else stride, act=None, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``."""
        out: Tensor = self.proj(self.pool(x))
        return out


class ResidualBlock(nn.Module):
    """``relu(drop_path(F(x)) + shortcut(x))`` (Eqs. 1-2); subclasses build ``F`` (:meth:`residual`)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, *, avg_down: bool, drop_path: float, eps: float):
        super().__init__()
        out = planes * self.expansion
        self.shortcut = (
            Shortcut(in_channels, out, stride, avg_down=avg_down, eps=eps)
            if stride != 1 or in_channels != out
            else nn.Identity()
        )
        self.drop_path = DropPath(drop_path)
        self.act = nn.ReLU()

    def residual(self, x: Tensor) -> Tensor:
        """The residual function ``F(x)``."""
        raise NotImplementedError

    def last_norm(self) -> nn.BatchNorm2d:
        """The BatchNorm that closes the residual branch (zeroed by ``zero_init_last``)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, planes * expansion, H / stride, W / stride]``."""
        out: Tensor = self.act(self.drop_path(self.residual(x)) + self.shortcut(x))
        return out


class BasicBlock(ResidualBlock):
    """``F = BN(conv3x3(relu(BN(conv3x3_s(x)))))`` (ResNet-18/34, Fig. 5 left)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, *, avg_down: bool, drop_path: float, eps: float):
        super().__init__(in_channels, planes, stride, avg_down=avg_down, drop_path=drop_path, eps=eps)
        self.conv1 = ConvNormAct(in_channels, planes, 3, stride=stride, eps=eps)
        self.conv2 = ConvNormAct(planes, planes, 3, act=None, eps=eps)

    def residual(self, x: Tensor) -> Tensor:
        """Two 3x3 convolutions."""
        out: Tensor = self.conv2(self.conv1(x))
        return out

    def last_norm(self) -> nn.BatchNorm2d:
        """``conv2``'s BatchNorm."""
        return self.conv2.bn


class Bottleneck(ResidualBlock):
    """``F = BN(conv1x1(relu(BN(conv3x3_s(relu(BN(conv1x1(x))))))))``, widening by 4 (Fig. 5 right)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, *, avg_down: bool, drop_path: float, eps: float):
        super().__init__(in_channels, planes, stride, avg_down=avg_down, drop_path=drop_path, eps=eps)
        self.conv1 = ConvNormAct(in_channels, planes, 1, eps=eps)
        self.conv2 = ConvNormAct(planes, planes, 3, stride=stride, eps=eps)  # the stride sits here (ResNet-B)
        self.conv3 = ConvNormAct(planes, planes * self.expansion, 1, act=None, eps=eps)

    def residual(self, x: Tensor) -> Tensor:
        """1x1 reduce, 3x3, 1x1 expand."""
        out: Tensor = self.conv3(self.conv2(self.conv1(x)))
        return out

    def last_norm(self) -> nn.BatchNorm2d:
        """``conv3``'s BatchNorm."""
        return self.conv3.bn


class ResNetStage(nn.Module):
    """One row ``convN_x`` of Table 1: an optional pool (``conv2_x``'s max pool), then residual blocks."""

    def __init__(self, pool: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.pool = pool
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H', W']``."""
        out: Tensor = self.blocks(self.pool(x))
        return out


def resnet_stem(config: ResNetConfig) -> nn.Sequential:
    """``conv1`` of Table 1 (7x7, stride 2, BN, ReLU), or the deep 3x3 stems of ResNet-C/T."""
    eps, width = config.norm_eps, config.stem_width
    if not config.stem_type:
        return nn.Sequential(ConvNormAct(config.in_chans, width, 7, stride=2, eps=eps))
    inner = width // 2
    first = 3 * (inner // 4) if config.stem_type == "deep_tiered" else inner
    return nn.Sequential(
        ConvNormAct(config.in_chans, first, 3, stride=2, eps=eps),
        ConvNormAct(first, inner, 3, eps=eps),
        ConvNormAct(inner, width, 3, eps=eps),
    )


class ResNet(ImageBackbone):
    """ResNet (He et al. 2016): ``stages = [conv1, conv2_x, conv3_x, conv4_x, conv5_x]``, average pool, linear."""

    config_class = ResNetConfig
    config: ResNetConfig

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__(config)
        block_class: type[ResidualBlock] = BasicBlock if config.block == "basic" else Bottleneck
        rates = iter(stochastic_depth_rates(config.drop_path_rate, sum(config.layers)))
        self.stages.append(resnet_stem(config))
        self.feature_info = [FeatureInfo(config.stem_width, 2, "stages.0")]
        channels, reduction = config.stem_width, 2
        for i, (depth, planes) in enumerate(zip(config.layers, config.channels, strict=True)):
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(depth):
                blocks.append(
                    block_class(
                        channels,
                        planes,
                        stride if j == 0 else 1,
                        avg_down=config.avg_down,
                        drop_path=next(rates),
                        eps=config.norm_eps,
                    )
                )
                channels = planes * EXPANSION[config.block]
            pool = nn.MaxPool2d(3, 2, 1) if i == 0 else nn.Identity()
            self.stages.append(ResNetStage(pool, blocks))
            reduction *= 2
            self.feature_info.append(FeatureInfo(channels, reduction, f"stages.{i + 1}"))
        self.init_head(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan-out) convolutions, unit BatchNorm, PyTorch's Linear; the branches' last BN zeroed."""
        init_cnn(self, conv="he_fan_out")
        if self.config.zero_init_last:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    nn.init.zeros_(m.last_norm().weight)


# -- timm checkpoints ----------------------------------------------------------------------------------------------
_WHO = "timm resnet"
_STEM_DEEP = {"0": "0.conv", "1": "0.bn", "3": "1.conv", "4": "1.bn", "6": "2.conv"}


def resnet_config_from_timm(state_dict: dict[str, Tensor], **overrides: Any) -> ResNetConfig:
    """The :class:`ResNetConfig` of a timm ResNet state dict (block, depths, widths, stem and shortcut type)."""
    deep = "conv1.0.weight" in state_dict
    stem_out = weight_shape(state_dict, "conv1.6.weight" if deep else "conv1.weight", who=_WHO)
    in_chans = weight_shape(state_dict, "conv1.0.weight" if deep else "conv1.weight", who=_WHO)[1]
    stem_type = ""
    if deep:
        first = state_dict["conv1.0.weight"].shape[0]
        stem_type = "deep" if first == stem_out[0] // 2 else "deep_tiered"
    stages = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"layer(\d+)\.", k))})
    layers = tuple(len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in stages)
    block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    channels = tuple(state_dict[f"layer{i}.0.conv1.weight"].shape[0] for i in stages)
    if block == "bottleneck" and any(
        state_dict[f"layer{i}.0.conv2.weight"].shape[1] != c for i, c in zip(stages, channels, strict=True)
    ):
        raise CheckpointError(f"{_WHO} converter: grouped 3x3 convolutions (ResNeXt) are not supported")
    if any(".se." in k or ".aa." in k or "drop_block" in k for k in state_dict):
        raise CheckpointError(f"{_WHO} converter: squeeze-excitation and anti-aliased ResNets are not supported")
    fields: dict[str, Any] = {
        "block": block,
        "layers": layers,
        "channels": channels,
        "stem_width": stem_out[0],
        "stem_type": stem_type,
        "avg_down": any(
            re.fullmatch(r"layer\d+\.0\.downsample\.1\.weight", k) and state_dict[k].dim() == 4 for k in state_dict
        ),
        "in_chans": in_chans,
        "num_classes": state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else 0,
    }
    return edifice.config("resnet", **{**fields, **overrides})  # type: ignore[return-value]


def _rules(config: ResNetConfig) -> list[tuple[str, Any]]:
    stem_bn = "2" if config.stem_type else "0"
    short = {"0": "pool", "1": "proj.conv", "2": "proj.bn"} if config.avg_down else {"0": "proj.conv", "1": "proj.bn"}
    return [
        (r"conv1\.weight", r"stages.0.0.conv.weight"),
        (r"conv1\.(\d)\.(.+)", lambda m: f"stages.0.{_STEM_DEEP[m.group(1)]}.{m.group(2)}"),
        (r"bn1\.(.+)", rf"stages.0.{stem_bn}.bn.\1"),
        (r"layer(\d+)\.(\d+)\.(conv|bn)(\d)\.(.+)", lambda m: _block_key(m)),
        (
            r"layer(\d+)\.(\d+)\.downsample\.(\d)\.(.+)",
            lambda m: f"stages.{m.group(1)}.blocks.{m.group(2)}.shortcut.{short[m.group(3)]}.{m.group(4)}",
        ),
        (r"fc\.(.+)", r"head.\1"),
    ]


def _block_key(m: re.Match[str]) -> str:
    stage, block, kind, n, leaf = m.groups()
    return f"stages.{stage}.blocks.{block}.conv{n}.{'conv' if kind == 'conv' else 'bn'}.{leaf}"


def from_timm(source: Any, **overrides: Any) -> ResNet:
    """Convert a timm ``ResNet`` (model or state dict; e.g. ``resnet50``, ``resnet50d``) to ``resnet``.

    The architecture is read off the weights; ``overrides`` set other config fields (e.g. ``drop_path_rate``).
    """
    state_dict = timm_state_dict(source, who=_WHO)
    overrides.setdefault("norm_eps", bn_eps(source))
    config = resnet_config_from_timm(state_dict, **overrides)
    weights = rename_keys(state_dict, _rules(config), who=_WHO)
    return load_converted(ResNet, config, weights, who=_WHO)
