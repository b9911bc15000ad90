"""``resnet``: parity with timm's ResNet through the converter, timm's backbone API, the paper's initialisation.

The signature: timm ResNets at tiny widths (basic and bottleneck blocks, the 7x7 and deep stems, the projection and
average-pool shortcuts) with redrawn weights and BatchNorm statistics are converted by ``edifice.convert`` and must
give timm's logits, features and every feature level at several image sizes (fp32, 1e-5). A residual block replaced
by a plain stack of convolutions (no shortcut) would fail it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from timm.models.resnet import BasicBlock as TimmBasic
from timm.models.resnet import Bottleneck as TimmBottleneck
from timm.models.resnet import ResNet as TimmResNet

import edifice
from edifice.errors import CheckpointError
from edifice.testing import redraw_parameters, signature
from edifice_vision._timm_convert import assert_matches_timm, redraw_batchnorm

TINY = {"block": "basic", "layers": (1, 1, 1, 1), "channels": (4, 8, 16, 32), "stem_width": 8, "num_classes": 10}


def timm_resnet(block: str, seed: int = 1, **kwargs: Any) -> TimmResNet:
    torch.manual_seed(0)
    kind = TimmBasic if block == "basic" else TimmBottleneck
    model = TimmResNet(kind, layers=(1, 2, 1, 1), channels=(4, 8, 8, 16), num_classes=7, **kwargs).eval()
    redraw_parameters(model, seed=seed)
    return redraw_batchnorm(model, seed=seed)


def images(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("resnet")
@pytest.mark.parametrize(
    ("block", "kwargs"),
    [
        ("basic", {}),
        ("bottleneck", {}),
        ("bottleneck", {"stem_type": "deep", "stem_width": 8, "avg_down": True}),  # resnet50d's stem and shortcut
        ("basic", {"stem_type": "deep_tiered", "stem_width": 8, "in_chans": 1}),
    ],
    ids=["resnet18-like", "resnet50-like", "resnet50d-like", "tiered-1ch"],
)
def test_converted_timm_resnet_matches_timm(block: str, kwargs: dict[str, Any]) -> None:
    theirs = timm_resnet(block, **kwargs)
    ours = edifice.convert("timm.resnet", theirs)
    assert ours.config.block == block and ours.config.layers == (1, 2, 1, 1)
    channels = kwargs.get("in_chans", 3)
    for h, w in [(32, 32), (40, 56)]:
        assert_matches_timm(ours, theirs, torch.randn(2, channels, h, w, generator=torch.Generator().manual_seed(h)))


@signature("resnet")
def test_without_the_shortcut_parity_fails() -> None:
    theirs = timm_resnet("basic")
    ours = edifice.convert("timm.resnet", theirs)
    for stage in ours.stages[1:]:
        for block in stage.blocks:  # type: ignore[union-attr]
            block.forward = lambda x, b=block: b.act(b.residual(x))  # a plain conv stack: F(x) without + x
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def test_converter_takes_a_state_dict_and_names_what_it_cannot_map() -> None:
    theirs = timm_resnet("bottleneck")
    from_model = edifice.convert("timm.resnet", theirs)
    from_sd = edifice.convert("timm.resnet", theirs.state_dict(), drop_path_rate=0.1)
    assert from_sd.config.drop_path_rate == 0.1
    torch.testing.assert_close(from_sd(images=images()), from_model(images=images()))
    state = dict(theirs.state_dict())
    state["layer1.0.se.fc.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="squeeze-excitation"):
        edifice.convert("timm.resnet", state)
    state = dict(theirs.state_dict())
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys.*extra\.weight"):
        edifice.convert("timm.resnet", state)
    with pytest.raises(CheckpointError, match=r"conv1\.weight"):
        edifice.convert("timm.resnet", {"fc.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("size", [16, 32, 48])
def test_intermediates_follow_feature_info_at_any_size(size: int) -> None:
    model = edifice.build("resnet", **TINY).eval()
    x = images(size, size)
    final, maps = model.forward_intermediates(x)
    expected = [(f.num_chs, -(-size // f.reduction)) for f in model.feature_info]  # ceil(size / stride)
    assert [(m.shape[1], m.shape[-1]) for m in maps] == expected
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16, 32]
    torch.testing.assert_close(final, model.forward_features(x))
    torch.testing.assert_close(model(images=x), model.forward_head(final))


def test_head_reset_and_pooled_features() -> None:
    model = edifice.build("resnet", **{**TINY, "num_classes": 0}).eval()
    assert model(images=images()).shape == (2, model.config.num_features) == (2, 32)
    bottleneck = edifice.build("resnet", **{**TINY, "block": "bottleneck", "num_classes": 0})
    assert bottleneck.num_features == bottleneck.config.num_features == 128
    model.reset_classifier(5)
    assert model(images=images()).shape == (2, 5)


def test_zero_init_last_makes_every_block_start_as_the_identity_branch() -> None:
    # Goyal et al. 2017: with the last BN scale zero, F(x) = BN bias = 0, so a block computes relu(shortcut(x)).
    model = edifice.build("resnet", **{**TINY, "stem_width": 4}).train()
    x = torch.randn(2, 4, 8, 8)
    block = model.stages[1].blocks[0]  # type: ignore[index]  # stride 1, 4 -> 4: identity shortcut
    torch.testing.assert_close(block(x), torch.relu(x))
    assert all(float(b.last_norm().weight.detach().abs().max()) == 0 for s in model.stages[1:] for b in s.blocks)  # type: ignore[union-attr]
    # He et al. 2015 over the fan-out: std = sqrt(2 / (k^2 C_out)).
    big = edifice.build("resnet", stem_width=256, num_classes=0, layers=(1,), channels=(4,), zero_init_last=False)
    std = big.stages[0][0].conv.weight.std().item()  # type: ignore[index]
    assert std == pytest.approx((2 / (49 * 256)) ** 0.5, rel=0.05)


def test_grad_checkpointing_keeps_outputs_and_gradients() -> None:
    model = edifice.build("resnet", **TINY).train()
    x = images()
    plain = model(images=x)
    grads = torch.autograd.grad(plain.square().sum(), list(model.parameters()))
    model.set_grad_checkpointing()
    checkpointed = model(images=x)
    torch.testing.assert_close(checkpointed, plain)
    for a, b in zip(torch.autograd.grad(checkpointed.square().sum(), list(model.parameters())), grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"block": "wide"}, "block"),
        ({"layers": (2, 2), "channels": (4, 8, 16)}, "channels"),
        ({"layers": (0, 1)}, "layers"),
        ({"stem_type": "deep", "stem_width": 7}, "stem_width"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        edifice.config("resnet", **overrides)


def quadrant_task(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 noise images with a bright 4x4 square in one of the four quadrants; the label is the quadrant."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    x = torch.randn(n, 3, 16, 16, generator=generator) * 0.5
    rows = torch.randint(0, 5, (n,), generator=generator) + (labels // 2) * 8
    cols = torch.randint(0, 5, (n,), generator=generator) + (labels % 2) * 8
    for i in range(n):
        x[i, :, rows[i] : rows[i] + 4, cols[i] : cols[i] + 4] += 2.0
    return x, labels


@pytest.mark.slow
def test_tiny_resnet_learns_where_the_square_is() -> None:
    # 150 Adam steps of batch 64 take a tiny ResNet-18-style net to >= 95% held-out accuracy on the quadrant task.
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = edifice.build("resnet", **{**TINY, "num_classes": 4})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        x, y = quadrant_task(64, gen)
        loss = torch.nn.functional.cross_entropy(model(images=x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = quadrant_task(512, gen)
    with torch.no_grad():
        accuracy = (model.eval()(images=x).argmax(-1) == y).float().mean().item()
    assert accuracy >= 0.95, accuracy
