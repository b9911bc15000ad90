"""``convnext``: parity with timm's ConvNeXt (V1 and V2) through the converter, the papers' initialisation, errors.

The signature: timm ConvNeXts at tiny widths -- the linear and the 1x1-convolution MLP (``conv_mlp``), V2's GRN
without layer scale, the named ``convnext_atto`` shrunk -- with every parameter redrawn are converted by
``edifice.convert`` and must give timm's logits, pooled and unpooled features, every stage's map and
``forward_intermediates``' options at several image sizes (fp32, 1e-5). A block without its depthwise convolution or
GRN would fail it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.errors import CheckpointError
from edifice.testing import redraw_parameters, signature
from edifice_vision._hierarchical import assert_intermediates_match_timm
from edifice_vision._timm_convert import assert_matches_timm

timm = pytest.importorskip("timm")

TINY = {"depths": (1, 1), "dims": (8, 16), "patch_size": 2, "kernel_size": 3, "num_classes": 10, "image_size": 16}


def timm_convnext(seed: int = 1, **kwargs: Any) -> Any:
    from timm.models.convnext import ConvNeXt as TimmConvNeXt

    torch.manual_seed(0)
    model = TimmConvNeXt(**{"depths": (1, 2, 1, 1), "dims": (8, 16, 16, 24), "num_classes": 7, **kwargs})
    return redraw_parameters(model, seed=seed).eval()


def images(h: int = 32, w: int = 32, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(seed))


@signature("convnext")
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"conv_mlp": True, "kernel_sizes": 5, "in_chans": 1},
        {"use_grn": True, "ls_init_value": None, "conv_mlp": True},
    ],
    ids=["v1", "v1-conv-mlp-k5", "v2-grn"],
)
def test_converted_timm_convnext_matches_timm(kwargs: dict[str, Any]) -> None:
    theirs = timm_convnext(**kwargs)
    ours = edifice.convert("timm.convnext", theirs)
    assert ours.config.version == ("v2" if kwargs.get("use_grn") else "v1")
    assert ours.config.depths == (1, 2, 1, 1) and ours.config.kernel_size == kwargs.get("kernel_sizes", 7)
    c = kwargs.get("in_chans", 3)
    for h, w in [(32, 32), (40, 72)]:
        assert_matches_timm(ours, theirs, images(h, w, c, seed=h))
    assert_intermediates_match_timm(ours, theirs, images(48, 40, c))


@signature("convnext")
def test_named_convnext_atto_matches_timm() -> None:
    torch.manual_seed(0)
    theirs = timm.create_model("convnext_atto", dims=(8, 8, 16, 16), depths=(1, 1, 2, 1), num_classes=5)
    redraw_parameters(theirs, seed=3).eval()
    assert_matches_timm(edifice.convert("timm.convnext", theirs), theirs, images(64, 64))


@pytest.mark.parametrize("part", ["conv_dw", "grn"])
def test_without_its_mechanism_parity_fails(part: str) -> None:
    theirs = timm_convnext(use_grn=True, ls_init_value=None)
    ours = edifice.convert("timm.convnext", theirs)
    for stage in ours.stages:
        for block in stage.blocks:  # type: ignore[union-attr]
            setattr(block, part, torch.nn.Identity())  # a plain MLP block, or V1's MLP without GRN
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def test_grn_is_the_papers_equations() -> None:
    # Woo et al. 2023 eqs. 1-3 in fp64: G = ||X_i|| over space, N = G / mean_c G, out = X + γ X N + β.
    from edifice_vision.convnext import GlobalResponseNorm

    grn = GlobalResponseNorm(6).double()
    torch.nn.init.normal_(grn.weight)
    torch.nn.init.normal_(grn.bias)
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    g = x.pow(2).sum((1, 2), keepdim=True).sqrt()
    expected = x + grn.weight * x * (g / (g.mean(-1, keepdim=True) + 1e-6)) + grn.bias
    torch.testing.assert_close(grn(x), expected)
    torch.testing.assert_close(GlobalResponseNorm(6)(x.float()), x.float())  # identity at init (γ = β = 0)


def test_initialisation_is_the_authors() -> None:
    model = edifice.build("convnext", **{**TINY, "dims": (64, 128), "head_init_scale": 0.5})
    block = model.stages[1].blocks[0]  # type: ignore[index]
    assert torch.all(block.ls.gamma == 1e-6)  # layer scale 1e-6 (§A.1)
    assert block.mlp.up_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)  # truncated N(0, 0.02²)
    assert block.mlp.up_proj.weight.abs().max().item() <= 2.0 and block.mlp.up_proj.bias.abs().sum().item() == 0
    assert model.head.weight.std().item() == pytest.approx(0.01, rel=0.15)  # scaled by head_init_scale
    v2 = edifice.build("convnext", **{**TINY, "version": "v2", "layer_scale_init": None})
    assert isinstance(v2.stages[0].blocks[0].ls, torch.nn.Identity)  # type: ignore[index]
    assert v2.stages[0].blocks[0].grn.weight.abs().sum().item() == 0  # type: ignore[index]


def test_intermediates_follow_feature_info_and_head_options() -> None:
    model = edifice.build("convnext", **TINY).eval()
    x = images(20, 28)
    final, maps = model.forward_intermediates(x)
    assert [(m.shape[1], m.shape[2], m.shape[3]) for m in maps] == [(8, 10, 14), (16, 5, 7)]
    assert [(f.num_chs, f.reduction) for f in model.feature_info] == [(8, 2), (16, 4)]
    torch.testing.assert_close(model(images=x), model.forward_head(final))
    model.reset_classifier(0)
    assert model(images=x).shape == (2, 16)
    model.reset_classifier(3, global_pool="max")
    assert model(images=x).shape == (2, 3)


def test_converter_takes_a_state_dict_and_names_what_it_cannot_map() -> None:
    theirs = timm_convnext()
    from_sd = edifice.convert("timm.convnext", theirs.state_dict(), drop_path_rate=0.1)
    assert from_sd.config.drop_path_rate == 0.1
    torch.testing.assert_close(from_sd.eval()(images=images()), theirs(images()), atol=1e-5, rtol=1e-5)
    state = dict(theirs.state_dict())
    state["head.pre_logits.fc.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError, match="head_hidden_size"):
        edifice.convert("timm.convnext", state)
    with pytest.raises(CheckpointError, match="only the 'patch' stem"):
        edifice.convert("timm.convnext", timm_convnext(stem_type="overlap"))
    state = {**theirs.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected keys.*extra\.weight"):
        edifice.convert("timm.convnext", state)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"version": "v3"}, "version"),
        ({"depths": (1, 1), "dims": (8,)}, "dims"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"layer_scale_init": 0.0}, "layer_scale_init"),
        ({"depths": ()}, "depths"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        edifice.config("convnext", **{**TINY, **overrides})


@pytest.mark.slow
def test_full_size_convnext_tiny_matches_timm() -> None:
    # The real ConvNeXt-T architecture (28M parameters) end to end, as a user's ImageNet checkpoint would load.
    torch.manual_seed(0)
    theirs = timm.create_model("convnext_tiny").eval()
    ours = edifice.convert("timm.convnext", theirs)
    assert ours.config == edifice.config("convnext", num_classes=1000)
    assert_matches_timm(ours, theirs, images(224, 224)[:1], atol=1e-4)
