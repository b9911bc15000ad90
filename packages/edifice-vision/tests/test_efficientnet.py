"""``efficientnet``: parity with timm's EfficientNet through the converter, compound scaling, timm's backbone API.

The signature: timm's ``efficientnet_b0`` built at width 0.25 and depth 0.34 with redrawn weights and BatchNorm
statistics, converted by ``edifice.convert``, gives timm's logits, features and five feature levels (fp32, 1e-5)
at several image sizes; without squeeze-excitation the comparison fails. The scaled tables of B1-B4 match timm's
block counts and widths (compound scaling, Eq. 3).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from timm.models.efficientnet import _gen_efficientnet
from torch import nn

import edifice
from edifice.errors import CheckpointError
from edifice.testing import redraw_parameters, signature
from edifice_vision._timm_convert import assert_matches_timm, redraw_batchnorm

TINY = {"width_multiplier": 0.1, "depth_multiplier": 0.1, "head_channels": 256, "num_classes": 10}
SCALE = {"channel_multiplier": 0.25, "depth_multiplier": 0.34}


def timm_effnet(variant: str = "efficientnet_b0", seed: int = 1, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    model = _gen_efficientnet(variant, num_classes=7, **{**SCALE, **kwargs}).eval()
    redraw_parameters(model, seed=seed)
    return redraw_batchnorm(model, seed=seed)


def convert(model: nn.Module, **overrides: Any) -> Any:
    return edifice.convert("timm.efficientnet", model, width_multiplier=0.25, depth_multiplier=0.34, **overrides)


def images(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("efficientnet")
def test_converted_timm_efficientnet_matches_timm() -> None:
    theirs = timm_effnet()
    ours = convert(theirs)
    for h, w in [(32, 32), (40, 56)]:
        assert_matches_timm(ours, theirs, images(h, w, seed=h))


@signature("efficientnet")
def test_without_squeeze_excitation_parity_fails() -> None:
    theirs = timm_effnet()
    ours = convert(theirs)
    for m in ours.modules():
        if hasattr(m, "se"):
            m.se = nn.Identity()
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


@pytest.mark.parametrize(
    ("variant", "width", "depth"),
    [("efficientnet_b0", 1.0, 1.0), ("efficientnet_b2", 1.1, 1.2), ("efficientnet_b4", 1.4, 1.8)],
)
def test_compound_scaling_builds_timm_tables(variant: str, width: float, depth: float) -> None:
    theirs = _gen_efficientnet(variant, channel_multiplier=width, depth_multiplier=depth, device="meta")
    config = edifice.config("efficientnet", width_multiplier=width, depth_multiplier=depth)
    levels = config.levels()
    assert sum(len(level) for level in levels) == sum(len(stage) for stage in theirs.blocks)
    assert [level[-1].out_channels for level in levels] == [f["num_chs"] for f in theirs.feature_info]
    assert config.stem_width == theirs.conv_stem.out_channels
    assert config.num_features == theirs.num_features


def test_converter_reads_state_dicts_and_names_mismatches() -> None:
    theirs = timm_effnet()
    from_sd = convert(theirs.state_dict())  # type: ignore[arg-type]
    torch.testing.assert_close(from_sd(images=images()), theirs(images()))
    with pytest.raises(CheckpointError, match="width_multiplier"):
        edifice.convert("timm.efficientnet", theirs)  # B0's depth: more blocks than the checkpoint
    same = _gen_efficientnet("tf_efficientnet_b0", pad_type="same", **SCALE)
    with pytest.raises(CheckpointError, match="SAME"):
        convert(same)


@pytest.mark.parametrize("size", [16, 32, 48])
def test_intermediates_follow_feature_info_at_any_size(size: int) -> None:
    model = edifice.build("efficientnet", **TINY).eval()
    x = images(size, size)
    final, maps = model.forward_intermediates(x)
    expected = [(f.num_chs, -(-size // f.reduction)) for f in model.feature_info]
    assert [(m.shape[1], m.shape[-1]) for m in maps] == expected
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16, 32]
    torch.testing.assert_close(final, model.forward_features(x))
    assert final.shape[1] == model.num_features == model.config.num_features == 24  # 256 x 0.1, rounded to 8
    early, _ = model.forward_intermediates(x, indices=[1], stop_early=True)
    assert early.shape[1] == model.feature_info[1].num_chs  # stopped early: no head convolution


def test_tf_initialisation_and_pooled_features() -> None:
    model = edifice.build("efficientnet", width_multiplier=2.0, depth_multiplier=0.1, num_classes=0)
    depthwise = model.stages[-1][-1].depthwise.conv.weight  # 3x3 depthwise: fan_out = k^2, std = sqrt(2 / 9)
    assert depthwise.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.1)
    assert model(images=images()).shape == (2, model.config.num_features)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"arch_def": (("xx_r1_c8",),)}, "arch_def"),
        ({"arch_def": (("ir_r1_k4_c8",),)}, "kernel must be odd"),
        ({"arch_def": (("ds_r1_e6_c8",),)}, "no expansion"),
        ({"activation": "sigmoidish"}, "activation"),
        ({"width_multiplier": 0.0}, "width_multiplier"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        edifice.config("efficientnet", **overrides)
