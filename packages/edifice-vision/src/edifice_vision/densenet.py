"""DenseNet-BC: densely connected convolutional networks, in timm's backbone API.

Paper: "Densely Connected Convolutional Networks", Huang, Liu, van der Maaten & Weinberger, CVPR 2017,
https://arxiv.org/abs/1608.06993. Inside a dense block the l-th layer receives the concatenation of every earlier
map of the block, ``x_l = H_l([x_0, x_1, ..., x_{l-1}])`` (Eq. 2), and adds ``k`` (``growth_rate``) maps. ``H_l``
is the bottleneck composite function BN-ReLU-Conv(1x1, 4k)-BN-ReLU-Conv(3x3, k) (§3, "Composite function",
"Bottleneck layers"). Transition layers between blocks are BN-ReLU-Conv(1x1)-AvgPool(2x2), the convolution keeping
``floor(theta m)`` of the ``m`` maps ("Compression", theta = 0.5 for DenseNet-BC). The network is Table 1:
Conv(7x7, stride 2), MaxPool(3x3, stride 2), four dense blocks with three transitions, then a final BN-ReLU, global
average pool and a linear classifier; DenseNet-121 has blocks of (6, 12, 24, 16) layers at k = 32 and a 2k-wide stem.

``stages`` follow timm's feature levels: ``[stem conv+BN+ReLU (stride 2), max pool + block 1 (4),
transition 1 + block 2 (8), transition 2 + block 3 (16), transition 3 + block 4 + final BN-ReLU (32)]``, so
``forward_intermediates`` and ``feature_info`` are timm's; ``stem`` and ``final_norm`` are unused.

Choices where the paper is silent, as in torchvision and timm: He-normal (fan-in) convolutions, unit/zero
BatchNorm, zero classifier bias; ``dense_drop_rate`` drops each layer's new maps (the paper's dropout after each
convolution is used only without data augmentation). Gradient checkpointing recomputes whole stages.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice.errors import CheckpointError, InputError
from edifice_vision._backbone import FeatureInfo, ImageBackbone
from edifice_vision._conv_blocks import ConvNormAct, init_cnn
from edifice_vision._timm_convert import bn_eps, load_converted, rename_keys, timm_state_dict, weight_shape
from edifice_vision.configs.densenet import DenseNetConfig

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Transition", "densenet_config_from_timm", "from_timm"]


class DenseLayer(nn.Module):
    """``H_l``: BN-ReLU-Conv(1x1, bn_size k)-BN-ReLU-Conv(3x3, k) on the concatenated maps; returns the ``k`` new."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int, *, drop_rate: float, eps: float) -> None:
        super().__init__()
        mid = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid, eps=eps)
        self.conv2 = nn.Conv2d(mid, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        """``[B, m, H, W] -> [B, k, H, W]``."""
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return F.dropout(y, self.drop_rate, self.training) if self.drop_rate else y


class DenseBlock(nn.Module):
    """Eq. (2): layer ``l`` sees ``[x_0, ..., x_{l-1}]``; the block returns all of them, ``m + L k`` maps."""

    def __init__(
        self, n_layers: int, in_channels: int, growth_rate: int, bn_size: int, *, drop_rate: float, eps: float
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, drop_rate=drop_rate, eps=eps)
            for i in range(n_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, m, H, W] -> [B, m + L k, H, W]``."""
        maps = [x]
        for layer in self.layers:
            maps.append(layer(torch.cat(maps, 1)))
        return torch.cat(maps, 1)


class Transition(nn.Module):
    """BN-ReLU-Conv(1x1, floor(theta m))-AvgPool(2x2, stride 2) between dense blocks."""

    def __init__(self, in_channels: int, out_channels: int, *, eps: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, eps=eps)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, m, H, W] -> [B, floor(theta m), H / 2, W / 2]``."""
        out: Tensor = self.pool(self.conv(F.relu(self.norm(x))))
        return out


class DenseStage(nn.Module):
    """One feature level: what enters it (max pool or a transition), a dense block, and (last) the final BN-ReLU."""

    def __init__(self, entry: nn.Module, block: DenseBlock, norm: nn.Module) -> None:
        super().__init__()
        self.entry = entry
        self.block = block
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        """``[B, m, H, W] -> [B, m', H', W']``."""
        y = self.block(self.entry(x))
        return F.relu(self.norm(y)) if isinstance(self.norm, nn.BatchNorm2d) else y


class DenseNet(ImageBackbone):
    """DenseNet-BC (Huang et al. 2017): stem, dense blocks joined by transitions, BN-ReLU, average pool, linear."""

    config_class = DenseNetConfig
    config: DenseNetConfig

    def __init__(self, config: DenseNetConfig) -> None:
        super().__init__(config)
        eps, k = config.norm_eps, config.growth_rate
        self.stages.append(nn.Sequential(ConvNormAct(config.in_chans, config.stem_width, 7, stride=2, eps=eps)))
        self.feature_info = [FeatureInfo(config.stem_width, 2, "stages.0")]
        previous, reduction = config.stem_width, 4
        last = len(config.block_config) - 1
        for i, (n_layers, (c_in, c_out)) in enumerate(zip(config.block_config, config.widths(), strict=True)):
            entry = nn.MaxPool2d(3, 2, 1) if i == 0 else Transition(previous, c_in, eps=eps)
            block = DenseBlock(n_layers, c_in, k, config.bn_size, drop_rate=config.dense_drop_rate, eps=eps)
            norm = nn.BatchNorm2d(c_out, eps=eps) if i == last else nn.Identity()
            self.stages.append(DenseStage(entry, block, norm))
            self.feature_info.append(FeatureInfo(c_out, reduction, f"stages.{i + 1}"))
            previous, reduction = c_out, reduction * 2
        self.init_head(previous)
        self.reset_parameters()

    @property
    def min_image_size(self) -> int:
        """The smallest image side every transition's 2x2 average pool still reduces to >= 1 pixel."""
        return int(2 ** (len(self.config.block_config) + 1))

    def check_inputs(self, **inputs: Any) -> dict[str, int]:
        """The spec's checks, and images of at least :attr:`min_image_size` a side."""
        sizes = super().check_inputs(**inputs)
        images = inputs.get("images")
        if isinstance(images, Tensor) and images.dim() == 4 and min(images.shape[-2:]) < self.min_image_size:
            raise InputError(
                f"densenet: images must be at least {self.min_image_size}x{self.min_image_size} with "
                f"{len(self.config.block_config)} dense blocks, got {list(images.shape[-2:])}"
            )
        return sizes

    def reset_parameters(self) -> None:
        """He-normal (fan-in) convolutions, unit/zero BatchNorm, PyTorch's Linear weight with a zero bias."""
        init_cnn(self, conv="he_fan_in", linear="zero_bias")


# -- timm checkpoints ----------------------------------------------------------------------------------------------
_WHO = "timm densenet"


def densenet_config_from_timm(state_dict: dict[str, Tensor], **overrides: Any) -> DenseNetConfig:
    """The :class:`DenseNetConfig` of a timm (or torchvision-layout) DenseNet state dict."""
    if "features.conv1.weight" in state_dict:
        raise CheckpointError(f"{_WHO} converter: deep stems (timm's densenet*d) are not supported")
    stem = weight_shape(state_dict, "features.conv0.weight", who=_WHO)
    growth = weight_shape(state_dict, "features.denseblock1.denselayer1.conv2.weight", who=_WHO)[0]
    mid = state_dict["features.denseblock1.denselayer1.conv1.weight"].shape[0]
    blocks = sorted({int(m.group(1)) for key in state_dict if (m := re.match(r"features\.denseblock(\d+)\.", key))})
    block_config = tuple(
        len({key.split(".")[2] for key in state_dict if key.startswith(f"features.denseblock{i}.")}) for i in blocks
    )
    compression = 0.5
    if "features.transition1.conv.weight" in state_dict:
        c_out, c_in = state_dict["features.transition1.conv.weight"].shape[:2]
        compression = c_out / c_in if c_out != c_in // 2 else 0.5
    fields: dict[str, Any] = {
        "growth_rate": growth,
        "block_config": block_config,
        "bn_size": mid // growth,
        "compression": compression,
        "stem_channels": stem[0],
        "in_chans": stem[1],
        "num_classes": state_dict["classifier.weight"].shape[0] if "classifier.weight" in state_dict else 0,
    }
    return edifice.config("densenet", **{**fields, **overrides})  # type: ignore[return-value]


def _rules(config: DenseNetConfig) -> list[tuple[str, Any]]:
    last = len(config.block_config)
    return [
        (r"features\.conv0\.(.+)", r"stages.0.0.conv.\1"),
        (r"features\.norm0\.(.+)", r"stages.0.0.bn.\1"),
        (
            r"features\.denseblock(\d+)\.denselayer(\d+)\.(.+)",
            lambda m: f"stages.{m.group(1)}.block.layers.{int(m.group(2)) - 1}.{m.group(3)}",
        ),
        (r"features\.transition(\d+)\.(.+)", lambda m: f"stages.{int(m.group(1)) + 1}.entry.{m.group(2)}"),
        (r"features\.norm5\.(.+)", rf"stages.{last}.norm.\1"),
        (r"classifier\.(.+)", r"head.\1"),
    ]


def from_timm(source: Any, **overrides: Any) -> DenseNet:
    """Convert a timm ``DenseNet`` (model or state dict; e.g. ``densenet121``) to ``densenet``.

    The architecture is read off the weights; ``overrides`` set other config fields (e.g. ``dense_drop_rate``).
    """
    state_dict = timm_state_dict(source, who=_WHO)
    overrides.setdefault("norm_eps", bn_eps(source))
    config = densenet_config_from_timm(state_dict, **overrides)
    weights = rename_keys(state_dict, _rules(config), who=_WHO)
    return load_converted(DenseNet, config, weights, who=_WHO)
