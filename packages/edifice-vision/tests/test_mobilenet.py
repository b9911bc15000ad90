"""``mobilenet``: MobileNetV2 and V3-Large against timm through the converters, and their defining pieces.

The signature: timm's ``mobilenetv3_large_100`` and ``mobilenetv2_100`` built at width 0.25 (depth 0.5) with
redrawn weights and BatchNorm statistics, converted by ``edifice.convert``, give timm's logits, features and five
feature levels (fp32, 1e-5). Replacing V3's hard-swish by ReLU, or giving V2's linear bottleneck an activation, fails.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from timm.models.efficientnet import _gen_mobilenet_v2
from timm.models.mobilenetv3 import _gen_mobilenet_v3
from torch import nn

import edifice
from edifice.testing import redraw_parameters, signature
from edifice_vision._timm_convert import assert_matches_timm, redraw_batchnorm

TINY = {"width_multiplier": 0.1, "depth_multiplier": 0.25, "head_channels": 64, "num_classes": 10}
SCALE = {"channel_multiplier": 0.25, "depth_multiplier": 0.5}


def timm_mobilenet(version: str, seed: int = 1) -> nn.Module:
    torch.manual_seed(0)
    if version == "v3":
        model = _gen_mobilenet_v3("mobilenetv3_large_100", num_classes=7, **SCALE)
    else:
        model = _gen_mobilenet_v2("mobilenetv2_100", num_classes=7, **SCALE)
    redraw_parameters(model.eval(), seed=seed)
    return redraw_batchnorm(model, seed=seed)


def convert(model: nn.Module, version: str) -> Any:
    name = "timm.mobilenetv3" if version == "v3" else "timm.mobilenetv2"
    return edifice.convert(name, model, width_multiplier=0.25, depth_multiplier=0.5)


def images(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("mobilenet")
@pytest.mark.parametrize("version", ["v3", "v2"])
def test_converted_timm_mobilenet_matches_timm(version: str) -> None:
    theirs = timm_mobilenet(version)
    ours = convert(theirs, version)
    assert ours.config.version == version
    for h, w in [(32, 32), (40, 56)]:
        assert_matches_timm(ours, theirs, images(h, w, seed=h))


@signature("mobilenet")
def test_v3_without_hard_swish_fails() -> None:
    theirs = timm_mobilenet("v3")
    ours = convert(theirs, "v3")
    for m in list(ours.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.Hardswish):
                setattr(m, child_name, nn.ReLU())
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


@signature("mobilenet")
def test_v2_with_an_activated_bottleneck_fails() -> None:
    theirs = timm_mobilenet("v2")
    ours = convert(theirs, "v2")
    for m in ours.modules():
        if hasattr(m, "project"):
            m.project.act = nn.ReLU6()  # the linear bottleneck (Sandler et al. §3.2) made non-linear
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def test_v3_squeeze_width_head_and_pooling() -> None:
    config = edifice.config("mobilenet")  # V3-Large at alpha = 1: Table 1's SE blocks squeeze exp/4, rounded to 8
    se = [b.se_channels for level in config.levels() for b in level if b.se_channels]
    assert se[:3] == [24, 32, 32] and config.stem_width == 16 and config.num_features == 1280
    model = edifice.build("mobilenet", **TINY).eval()
    features = model.forward_features(images())
    assert features.shape[1] == model.feature_info[-1].num_chs  # the head conv comes after pooling
    assert model.forward_head(features, pre_logits=True).shape == (2, 64)
    with pytest.raises(ValueError, match="global_pool"):
        edifice.config("mobilenet", global_pool="")
    with pytest.raises(ValueError, match="version"):
        edifice.config("mobilenet", version="v1")


@pytest.mark.parametrize("version", ["v2", "v3"])
@pytest.mark.parametrize("size", [16, 48])
def test_intermediates_follow_feature_info_at_any_size(version: str, size: int) -> None:
    model = edifice.build("mobilenet", **TINY, version=version).eval()
    x = images(size, size)
    final, maps = model.forward_intermediates(x)
    expected = [(f.num_chs, -(-size // f.reduction)) for f in model.feature_info]
    assert [(m.shape[1], m.shape[-1]) for m in maps] == expected
    torch.testing.assert_close(final, model.forward_features(x))
    model.reset_classifier(3)
    assert model(images=x).shape == (2, 3)
