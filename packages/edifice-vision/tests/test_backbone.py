"""The family's backbone base: timm's API (intermediates, pooling, classifier reset, checkpointing) on a toy CNN."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from edifice_vision._backbone import DropPath, FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision.configs._image import ImageConfig


class ToyNet(ImageBackbone):
    """Two stride-2 conv stages: the smallest backbone with two feature levels."""

    config_class = ImageConfig

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config)
        self.stem = nn.Conv2d(config.in_chans, 4, 3, padding=1)
        self.stages = nn.ModuleList([nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Conv2d(6, 8, 3, stride=2, padding=1)])
        self.feature_info = [FeatureInfo(6, 2, "stages.0"), FeatureInfo(8, 4, "stages.1")]
        self.init_head(8)

    def check_inputs(self, **inputs: torch.Tensor) -> dict[str, int]:  # no registered spec for the toy
        return {}


def toy(**fields: object) -> ToyNet:
    config = ImageConfig(arch="toy", num_classes=5, **fields)  # type: ignore[arg-type]
    torch.manual_seed(0)
    return ToyNet(config).eval()


def test_intermediates_are_the_stages_feature_maps() -> None:
    model = toy()
    images = torch.randn(2, 3, 16, 16)
    final, maps = model.forward_intermediates(images)
    assert [m.shape for m in maps] == [(2, 6, 8, 8), (2, 8, 4, 4)]
    assert [info.num_chs for info in model.feature_info] == [m.shape[1] for m in maps]
    assert [16 // info.reduction for info in model.feature_info] == [m.shape[-1] for m in maps]
    torch.testing.assert_close(final, model.forward_features(images))
    torch.testing.assert_close(model(images), model.forward_head(final))
    only_last = model.forward_intermediates(images, indices=1, intermediates_only=True, output_fmt="NHWC")
    assert isinstance(only_last, list)
    torch.testing.assert_close(only_last[0], maps[1].permute(0, 2, 3, 1))
    early, first = model.forward_intermediates(images, indices=[0], stop_early=True)
    torch.testing.assert_close(early, maps[0])
    assert len(first) == 1


@pytest.mark.parametrize(("indices", "words"), [(3, "last 3 of 2"), ([2], "out of range"), (0, "last 0")])
def test_bad_intermediate_indices_are_named(indices: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        toy().forward_intermediates(torch.randn(1, 3, 8, 8), indices=indices)  # type: ignore[arg-type]


def test_pooling_and_classifier_reset() -> None:
    model = toy()
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(model.forward_head(x, pre_logits=True), x.mean((2, 3)))
    model.reset_classifier(0, global_pool="max")
    torch.testing.assert_close(model.forward_head(x), x.amax((2, 3)))
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(3, global_pool="token")
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        model.reset_classifier(-1)


def test_grad_checkpointing_keeps_outputs_and_gradients() -> None:
    model = toy().train()
    images = torch.randn(2, 3, 16, 16)
    plain = model(images)
    grads = torch.autograd.grad(plain.sum(), list(model.parameters()))
    model.set_grad_checkpointing()
    checkpointed = model(images)
    torch.testing.assert_close(checkpointed, plain)
    for a, b in zip(torch.autograd.grad(checkpointed.sum(), list(model.parameters())), grads, strict=True):
        torch.testing.assert_close(a, b)


def test_stochastic_depth_matches_timm_schedule_and_keeps_the_mean() -> None:
    assert stochastic_depth_rates(0.3, 4) == pytest.approx(torch.linspace(0, 0.3, 4).tolist())
    assert stochastic_depth_rates(0.3, 1) == [0.0]
    drop = DropPath(0.5).train()
    torch.manual_seed(0)
    out = drop(torch.ones(4000, 3))
    assert set(out[:, 0].unique().tolist()) == {0.0, 2.0}  # whole samples dropped, the kept ones rescaled
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(drop.eval()(torch.ones(2, 3)), torch.ones(2, 3))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [("global_pool", "token", "global_pool"), ("drop_rate", 1.0, "drop_rate"), ("in_chans", 0, "in_chans")],
)
def test_config_names_the_bad_field(field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        dataclasses.replace(ImageConfig(arch="toy"), **{field: value})
