"""``densenet``: parity with timm's DenseNet through the converter, dense connectivity, timm's backbone API.

The signature: timm DenseNets at tiny growth rates with redrawn weights and BatchNorm statistics, converted by
``edifice.convert``, give timm's logits, features and feature levels (fp32, 1e-5). A layer that saw only its
predecessor's maps (no concatenation, Eq. 2) could not even load the weights; one whose concatenation dropped the
block input fails the comparison.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from timm.models.densenet import DenseNet as TimmDenseNet

import edifice
from edifice.errors import CheckpointError, InputError
from edifice.testing import redraw_parameters, signature
from edifice_vision._timm_convert import assert_matches_timm, redraw_batchnorm

TINY = {"growth_rate": 4, "block_config": (2, 2, 2), "bn_size": 2, "num_classes": 10}


def timm_densenet(seed: int = 1, **kwargs: Any) -> TimmDenseNet:
    torch.manual_seed(0)
    model = TimmDenseNet(num_classes=7, **kwargs).eval()
    redraw_parameters(model, seed=seed)
    return redraw_batchnorm(model, seed=seed)


def images(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("densenet")
@pytest.mark.parametrize(
    "kwargs",
    [{"growth_rate": 4, "block_config": (2, 3, 1, 2), "bn_size": 2}, {"growth_rate": 6, "block_config": (1, 2)}],
    ids=["four-blocks", "two-blocks-bn4"],
)
def test_converted_timm_densenet_matches_timm(kwargs: dict[str, Any]) -> None:
    theirs = timm_densenet(**kwargs)
    ours = edifice.convert("timm.densenet", theirs)
    assert ours.config.block_config == kwargs["block_config"] and ours.config.growth_rate == kwargs["growth_rate"]
    for h, w in [(32, 32), (40, 56)]:
        assert_matches_timm(ours, theirs, images(h, w, seed=h))


@signature("densenet")
def test_dropping_the_block_input_from_the_concatenation_fails_parity() -> None:
    theirs = timm_densenet(growth_rate=4, block_config=(2, 2), bn_size=2)
    ours = edifice.convert("timm.densenet", theirs)
    block = ours.stages[1].block

    def forward(x: torch.Tensor) -> torch.Tensor:  # x_l = H_l([x_0..x_{l-1}]), but the block output omits x_0
        maps = [x]
        for layer in block.layers:
            maps.append(layer(torch.cat(maps, 1)))
        return torch.cat([torch.zeros_like(x), *maps[1:]], 1)

    block.forward = forward
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def test_dense_block_widths_follow_growth_and_compression() -> None:
    config = edifice.config("densenet")  # DenseNet-121: 64 + 6*32 = 256 -> 128 + 12*32 = 512 -> 256 + ... = 1024
    assert config.widths() == [(64, 256), (128, 512), (256, 1024), (512, 1024)]
    assert config.num_features == 1024
    model = edifice.build("densenet", **TINY).eval()
    _, maps = model.forward_intermediates(images(16, 16))
    assert [m.shape[1] for m in maps] == [f.num_chs for f in model.feature_info] == [8, 16, 16, 16]
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16]
    model.reset_classifier(0)
    assert model(images=images(48, 48)).shape == (2, model.config.num_features)


def test_converter_reads_state_dicts_and_refuses_what_it_cannot_map() -> None:
    theirs = timm_densenet(growth_rate=4, block_config=(1, 1), bn_size=2)
    ours = edifice.convert("timm.densenet", theirs.state_dict())
    torch.testing.assert_close(ours(images=images()), theirs(images()))
    state = dict(theirs.state_dict())
    state["features.conv1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="deep stems"):
        edifice.convert("timm.densenet", state)


def test_too_small_images_and_bad_config_are_named() -> None:
    model = edifice.build("densenet", **TINY)
    with pytest.raises(InputError, match="at least 16x16"):
        model(images=images(8, 8))
    with pytest.raises(ValueError, match="compression"):
        edifice.config("densenet", compression=0.0)
    with pytest.raises(ValueError, match="block_config"):
        edifice.config("densenet", block_config=())
