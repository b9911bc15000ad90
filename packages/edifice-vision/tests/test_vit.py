"""``vit``: parity with timm's VisionTransformer through the converter, timm's backbone API, any image size.

The signature is parity with ``timm`` (logits, features and every block's feature map from
``forward_intermediates``) on redrawn weights at the training size and, with ``dynamic_img_size``, at other sizes
where both resample the position embeddings bicubically.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice_vision._vit_blocks import resample_pos_embed

timm = pytest.importorskip("timm")
TOL = 1e-5


def images(*shape: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tiny(**overrides: Any) -> Any:
    from edifice_vision.configs.vit import TINY

    torch.manual_seed(0)
    return edifice.build("vit", **{**TINY, **overrides}).eval()


@signature("vit")
@pytest.mark.parametrize(
    "options",
    [{}, {"global_pool": "avg", "fc_norm": True}, {"class_token": False, "global_pool": "avg", "qkv_bias": False}],
    ids=["token", "gap-fc-norm", "no-class-token"],
)
def test_matches_timm_vision_transformer(options: dict[str, Any], vit_helpers: Any) -> None:
    theirs = vit_helpers.timm_model("vit_tiny_patch16_224", num_classes=10, **options)
    ours = edifice.convert("timm.VisionTransformer", theirs)
    assert type(ours).__name__ == "VisionTransformer"
    vit_helpers.assert_same_backbone(ours, theirs, images(2, 3, 16, 16))


@signature("vit")
@pytest.mark.parametrize("size", [(24, 32), (8, 8)])
def test_matches_timm_at_other_image_sizes(size: tuple[int, int], vit_helpers: Any) -> None:
    theirs = vit_helpers.timm_model("vit_tiny_patch16_224", num_classes=10, dynamic_img_size=True)
    ours = edifice.convert("timm.VisionTransformer", theirs)
    vit_helpers.assert_same_backbone(ours, theirs, images(2, 3, *size))


def test_converter_resamples_to_a_new_training_size(vit_helpers: Any) -> None:
    theirs = vit_helpers.timm_model("vit_tiny_patch16_224", num_classes=10, dynamic_img_size=True)
    ours = edifice.convert("timm.VisionTransformer", theirs, image_size=32)
    assert ours.config.image_size == 32 and ours.stem.pos_embed.shape == (1, 1 + 64, 32)
    x = images(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=TOL, rtol=TOL)


def test_position_embeddings_resample_on_load_like_timm() -> None:
    small, large = tiny(), tiny(image_size=32)
    large.load_state_dict(small.state_dict())
    want = timm.layers.resample_abs_pos_embed(small.stem.pos_embed, new_size=(8, 8), num_prefix_tokens=1)
    torch.testing.assert_close(large.stem.pos_embed, want)
    same = resample_pos_embed(small.stem.pos_embed, (4, 4), (4, 4), 1, antialias=True)
    assert same is small.stem.pos_embed


def test_image_sizes_the_patch_does_not_divide_are_named() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"vit: image size 18x16 is not divisible by patch_size=4"):
        model(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match="image_size"):
        edifice.config("vit", image_size=18, patch_size=4)


def test_reset_classifier_and_pooled_features() -> None:
    model = tiny()
    x = images(2, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), feats[:, 0])
        model.reset_classifier(3, global_pool="avg")
        assert model(x).shape == (2, 3)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="map")


def test_intermediates_are_patch_maps_at_the_patch_stride() -> None:
    model = tiny()
    x = images(2, 3, 16, 24)
    final, maps = model.forward_intermediates(x, indices=[0, -1])
    assert [m.shape for m in maps] == [(2, 32, 4, 6)] * 2
    assert [i.reduction for i in model.feature_info] == [4, 4]
    torch.testing.assert_close(final, model.forward_features(x))
    last = model.forward_intermediates(x, indices=1, intermediates_only=True)
    torch.testing.assert_close(last[0], maps[1])


def test_grad_checkpointing_keeps_gradients() -> None:
    model = tiny(drop_path_rate=0.0).train()
    x = images(2, 3, 16, 16)
    grads = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    model.set_grad_checkpointing()
    again = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    for a, b in zip(again, grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("global_pool", "map", "global_pool"),
        ("ffn", "moe", "ffn"),
        ("positional", "sincos", "positional"),
        ("n_heads", 5, "n_heads"),
        ("fc_norm", True, "fc_norm"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, words: str) -> None:
    from edifice_vision.configs.vit import TINY

    with pytest.raises(ValueError, match=words):
        edifice.config("vit", **{**TINY, field: value})


@pytest.mark.slow
def test_tiny_vit_learns_where_the_bright_quadrant_is() -> None:
    """4 classes only attention across patches solves: which quadrant holds the bright square (≥ 90%, 200 steps)."""
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 3, 16, 16, generator=gen) * 0.5
        y = torch.randint(0, 4, (n,), generator=gen)
        for i, q in enumerate(y.tolist()):
            r, c = divmod(q, 2)
            x[i, :, r * 8 + 2 : r * 8 + 6, c * 8 + 2 : c * 8 + 6] += 2.0
        return x, y

    torch.manual_seed(0)
    model = edifice.build("vit", image_size=16, patch_size=4, d_model=32, n_layers=2, n_heads=4, num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(200):
        x, y = batch(32)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = batch(512)
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == y).float().mean().item()
    assert accuracy >= 0.9, accuracy
