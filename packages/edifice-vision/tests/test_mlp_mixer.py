"""``mlp_mixer``: parity with timm's MlpMixer through the converter, timm's backbone API, one image size.

The signature is parity with ``timm`` (logits, pooled features and every layer's feature map from
``forward_intermediates``) on redrawn weights of a shrunk ``mixer_s16_224``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.errors import CheckpointError
from edifice.testing import redraw_parameters, signature

timm = pytest.importorskip("timm")
TOL = 1e-5
#: ``mixer_s16_224`` shrunk: 16x16 images in 4x4 patches (S = 16), width 32, two layers (D_S = 16, D_C = 128).
TIMM_TINY: dict[str, Any] = {"img_size": 16, "patch_size": 4, "num_blocks": 2, "embed_dim": 32, "num_classes": 10}


def images(*shape: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def timm_mixer(**kwargs: Any) -> torch.nn.Module:
    """timm's ``MlpMixer`` as ``mixer_s16_224`` builds it (Mixer blocks, ratios (0.5, 4)), shrunk, weights redrawn."""
    torch.manual_seed(0)
    model = timm.models.mlp_mixer.MlpMixer(**{**TIMM_TINY, **kwargs})
    return redraw_parameters(model, seed=1).eval()


def timm_resmlp() -> torch.nn.Module:
    from timm.models.mlp_mixer import Affine, ResBlock

    return timm.models.mlp_mixer.MlpMixer(**TIMM_TINY, mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine)


def tiny(**overrides: Any) -> Any:
    from edifice_vision.configs.mlp_mixer import TINY

    torch.manual_seed(0)
    return edifice.build("mlp_mixer", **{**TINY, **overrides}).eval()


@signature("mlp_mixer")
@pytest.mark.parametrize(
    "options", [{}, {"num_classes": 0}, {"global_pool": "", "in_chans": 1}], ids=["logits", "features", "no-pool"]
)
def test_matches_timm_mlp_mixer(options: dict[str, Any], vit_helpers: Any) -> None:
    theirs = timm_mixer(**options)
    ours = edifice.convert("timm.mlp_mixer", theirs)
    assert type(ours).__name__ == "MlpMixer"
    assert (ours.config.token_mlp_dim, ours.config.channel_mlp_dim, ours.config.image_size) == (16, 128, 16)
    x = images(2, options.get("in_chans", 3), 16, 16)
    vit_helpers.assert_same_backbone(ours.eval(), theirs, x)
    with torch.no_grad():
        got = ours.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)
        want = theirs.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)
    torch.testing.assert_close(got[0], want[0], atol=TOL, rtol=TOL)
    assert [(f.num_chs, f.reduction) for f in ours.feature_info] == [
        (f["num_chs"], f["reduction"]) for f in theirs.feature_info
    ]


@signature("mlp_mixer")
def test_converter_takes_a_state_dict_and_fits_timm_rectangular_mlp_widths() -> None:
    theirs = timm_mixer(mlp_ratio=(1.0, 2.0), patch_size=8, img_size=32)
    ours = edifice.convert("timm.mlp_mixer", theirs.state_dict())
    assert (ours.config.image_size, ours.config.token_mlp_dim, ours.config.channel_mlp_dim) == (32, 32, 64)
    x = images(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs(x), atol=TOL, rtol=TOL)


def test_token_mixing_ties_the_model_to_its_image_size() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"mlp_mixer: image size 24x16 gives 24 patches.*16x16 images \(16 patches"):
        model(torch.randn(1, 3, 24, 16))
    with pytest.raises(ValueError, match=r"image size 18x16 is not divisible by patch_size=4"):
        model(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match="image_size"):
        edifice.config("mlp_mixer", image_size=18, patch_size=4)


def test_converter_refuses_resmlp_and_another_image_size() -> None:
    with pytest.raises(CheckpointError, match="mlp_tokens"):
        edifice.convert("timm.mlp_mixer", timm_resmlp())
    with pytest.raises(CheckpointError, match="do not fit"):
        edifice.convert("timm.mlp_mixer", timm_mixer(), image_size=32)


def test_token_mixing_mixes_across_patches_and_only_there() -> None:
    """Changing one patch changes every patch's output (token mixing); a model without it would not."""
    model = tiny(num_classes=0, global_pool="")
    x = images(1, 3, 16, 16)
    y = x.clone()
    y[..., :4, :4] += 1.0  # patch 0 only
    with torch.no_grad():
        delta = (model(x) - model(y)).abs().amax(-1)[0]  # per patch
        assert bool((delta > 1e-4).all()), delta
        for block in model.stages:
            block.token_mlp.down_proj.weight.zero_()
            block.token_mlp.down_proj.bias.zero_()
        delta = (model(x) - model(y)).abs().amax(-1)[0]
    assert delta[0] > 1e-4 and bool((delta[1:] == 0).all())


def test_reset_classifier_and_pooled_features() -> None:
    model = tiny()
    x = images(2, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 16, 32)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), feats.mean(1))
        model.reset_classifier(3, global_pool="")
        assert model(x).shape == (2, 16, 3)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="token")


def test_grad_checkpointing_keeps_gradients() -> None:
    model = tiny().train()
    x = images(2, 3, 16, 16)
    grads = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    model.set_grad_checkpointing()
    again = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    for a, b in zip(again, grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("global_pool", "token", "global_pool"),
        ("token_mlp_dim", 0, "token_mlp_dim"),
        ("activation", "swish2", "activation"),
        ("proj_drop_rate", 1.0, "proj_drop_rate"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, words: str) -> None:
    from edifice_vision.configs.mlp_mixer import TINY

    with pytest.raises(ValueError, match=words):
        edifice.config("mlp_mixer", **{**TINY, field: value})


def test_catalogue_names_are_aliases() -> None:
    cfg = edifice.config(
        "mlp_mixer",
        hidden_size=32,
        num_layers=1,
        token_mlp_dim=8,
        channel_mlp_dim=16,
        in_channels=1,
        dropout=0.1,
        image_size=16,
        patch_size=4,
        num_classes=2,
    )
    assert (cfg.d_model, cfg.n_layers, cfg.in_chans, cfg.drop_rate) == (32, 1, 1, 0.1)
