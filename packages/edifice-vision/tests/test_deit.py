"""``deit``: the distillation token and its head against timm's ``VisionTransformerDistilled``; the DeiT objectives.

The signature is parity with timm's ``deit_tiny_distilled_patch16_224`` layout at the tiny size (redrawn weights):
the averaged logits, each head's logits, and every block's feature map, which only agree if the distillation token
sits after the class token with its own position and its own head.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import signature

timm = pytest.importorskip("timm")


def converted(vit_helpers: Any, **kwargs: Any) -> tuple[Any, Any]:
    theirs = vit_helpers.timm_model("deit_tiny_distilled_patch16_224", num_classes=10, **kwargs)
    return edifice.convert("timm.VisionTransformerDistilled", theirs), theirs


@signature("deit")
def test_matches_timm_distilled_deit(vit_helpers: Any) -> None:
    ours, theirs = converted(vit_helpers)
    x = vit_helpers.images(2, 3, 16, 16)
    vit_helpers.assert_same_backbone(ours, theirs, x)
    theirs.set_distilled_training(True)
    theirs.train()
    with torch.no_grad():
        cls, dist = theirs(x)  # timm returns both heads in distilled training (no dropout here)
        heads = ours.forward_heads(x)
    torch.testing.assert_close(heads.cls_logits, cls, atol=vit_helpers.TOL, rtol=vit_helpers.TOL)
    torch.testing.assert_close(heads.dist_logits, dist, atol=vit_helpers.TOL, rtol=vit_helpers.TOL)
    assert not torch.allclose(heads.cls_logits, heads.dist_logits)


@signature("deit")
def test_matches_timm_at_another_image_size(vit_helpers: Any) -> None:
    ours, theirs = converted(vit_helpers, dynamic_img_size=True)
    vit_helpers.assert_same_backbone(ours, theirs, vit_helpers.images(2, 3, 24, 8))


def test_hard_and_soft_distillation_objectives(vit_helpers: Any) -> None:
    ours, _ = converted(vit_helpers)
    x, labels = vit_helpers.images(4, 3, 16, 16), torch.tensor([0, 3, 5, 9])
    teacher = vit_helpers.images(4, 10, seed=5)
    heads = ours.forward_heads(x)
    hard = 0.5 * F.cross_entropy(heads.cls_logits, labels) + 0.5 * F.cross_entropy(
        heads.dist_logits, teacher.argmax(-1)
    )
    torch.testing.assert_close(ours.loss(x, labels, teacher), hard)
    soft_model = edifice.convert(
        "timm.VisionTransformerDistilled",
        (None, ours.state_dict() and _timm_state(vit_helpers)),
        n_heads=4,
        distillation_type="soft",
        distillation_tau=2.0,
        distillation_alpha=0.3,
    )
    p_t, log_p_s = F.softmax(teacher / 2.0, -1), F.log_softmax(heads.dist_logits / 2.0, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    want = 0.7 * F.cross_entropy(heads.cls_logits, labels) + 0.3 * 4.0 * kl
    torch.testing.assert_close(soft_model.loss(x, labels, teacher), want)
    with pytest.raises(ValueError, match="teacher_logits expected"):
        ours.loss(x, labels, teacher[:, :5])


def _timm_state(vit_helpers: Any) -> dict[str, torch.Tensor]:
    return dict(vit_helpers.timm_model("deit_tiny_distilled_patch16_224", num_classes=10).state_dict())


def test_reset_classifier_replaces_both_heads(vit_helpers: Any) -> None:
    ours, _ = converted(vit_helpers)
    x = vit_helpers.images(2, 3, 16, 16)
    with torch.no_grad():
        z = ours.forward_features(x)
        ours.reset_classifier(0)
        torch.testing.assert_close(ours(x), (z[:, 0] + z[:, 1]) / 2)
        ours.reset_classifier(7)
    assert ours(x).shape == (2, 7) and ours.head_dist.out_features == 7
    with pytest.raises(ValueError, match="global_pool"):
        ours.reset_classifier(7, global_pool="avg")
