"""``detr``: parity with transformers' DetrForObjectDetection (forward and Hungarian loss), box utilities, overfitting.

The signature: a tiny transformers DETR (timm ResNet backbone, the layout of every released checkpoint) with every
weight and frozen-BatchNorm statistic redrawn is converted by ``edifice.convert("transformers.detr", ...)`` and must
give its logits and boxes (fp32, 1e-5) on padded images with a pixel mask; and our Hungarian loss must equal
transformers' on the same predictions and targets, auxiliary layers included. Attention without the positional
encoding on queries/keys, a plain (unmasked or uniform) attention, or a loss matched greedily would fail.
"""

from __future__ import annotations

import itertools
import re
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn

import edifice
from edifice.errors import CheckpointError
from edifice.testing import redraw_parameters, signature
from edifice_vision._detection import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    hungarian_match,
    post_process,
    set_loss,
)

TOL = 1e-5
TINY: dict[str, Any] = {
    "d_model": 16,
    "n_heads": 2,
    "num_encoder_layers": 1,
    "num_decoder_layers": 2,
    "ffn_dim": 32,
    "num_queries": 5,
    "num_classes": 3,
    "backbone_block": "basic",
    "backbone_layers": (1, 1),
    "backbone_channels": (8, 16),
    "backbone_stem_width": 8,
}


def transformers_detr(aux: bool = False, seed: int = 1) -> nn.Module:
    """A tiny DetrForObjectDetection: timm ResNet backbone at widths (4, 8, 8, 16), weights and BN redrawn."""
    timm = pytest.importorskip("timm")
    tr = pytest.importorskip("transformers")

    torch.manual_seed(0)
    config = tr.DetrConfig(
        use_timm_backbone=True,
        backbone="resnet18",
        use_pretrained_backbone=False,
        d_model=16,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
        num_labels=3,
        auxiliary_loss=aux,
    )
    real_create = timm.create_model

    def tiny_resnet(name: str, **kwargs: Any) -> nn.Module:  # resnet18's classes at a test size
        return real_create(name, **kwargs, layers=(1, 2, 1, 1), channels=(4, 8, 8, 16), stem_width=8)

    with mock.patch.object(timm, "create_model", tiny_resnet):
        model = tr.DetrForObjectDetection(config)
    redraw_parameters(model, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "backbone" in name and buf.is_floating_point():
                if name.endswith("running_var"):
                    buf.copy_(torch.rand(buf.shape, generator=gen) * 1.5 + 0.5)
                else:
                    buf.copy_(torch.randn(buf.shape, generator=gen) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return model.eval()


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images in one 64x48 batch: the second is 28x20, zero-padded, with its pixel mask."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 48, generator=gen)
    mask = torch.ones(2, 64, 48, dtype=torch.bool)
    mask[1, 28:] = False
    mask[1, :, 20:] = False
    images[1, :, ~mask[1]] = 0.0
    return images, mask


@signature("detr")
def test_parity_with_transformers_detr() -> None:
    theirs = transformers_detr()
    ours = edifice.convert("transformers.detr", theirs)
    assert ours.config.backbone_layers == (1, 2, 1, 1) and ours.config.n_heads == 2
    images, mask = padded_batch()
    with torch.no_grad():
        want = theirs(pixel_values=images, pixel_mask=mask.long())
        got = ours(images=images, pixel_mask=mask)
        want_nomask = theirs(pixel_values=images)
        got_nomask = ours(images=images)
    torch.testing.assert_close(got.logits, want.logits, atol=TOL, rtol=TOL)
    torch.testing.assert_close(got.boxes, want.pred_boxes, atol=TOL, rtol=TOL)
    torch.testing.assert_close(got_nomask.logits, want_nomask.logits, atol=TOL, rtol=TOL)
    torch.testing.assert_close(got_nomask.boxes, want_nomask.pred_boxes, atol=TOL, rtol=TOL)
    assert not torch.allclose(got.logits[1], got_nomask.logits[1], atol=1e-4)  # the mask matters


def test_converter_reads_state_dicts_with_transformers_4_names() -> None:
    theirs = transformers_detr(seed=2)
    legacy = {}
    for key, value in theirs.state_dict().items():
        key = key.replace("model.backbone.", "model.backbone.conv_encoder.").replace(".o_proj.", ".out_proj.")
        legacy[re.sub(r"layers\.(\d+)\.mlp\.fc", r"layers.\1.fc", key)] = value
    ours = edifice.convert("transformers.detr", legacy, config=theirs.config.to_dict())
    images, mask = padded_batch(seed=1)
    with torch.no_grad():
        want, got = theirs(pixel_values=images, pixel_mask=mask.long()), ours(images=images, pixel_mask=mask)
    torch.testing.assert_close(got.logits, want.logits, atol=TOL, rtol=TOL)
    torch.testing.assert_close(got.boxes, want.pred_boxes, atol=TOL, rtol=TOL)


def random_targets(gen: torch.Generator, counts: tuple[int, ...], num_classes: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for n in counts:
        centre = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
        out.append(
            {"class_labels": torch.randint(0, num_classes, (n,), generator=gen), "boxes": torch.cat([centre, size], 1)}
        )
    return out


@signature("detr")
@pytest.mark.parametrize("aux", [False, True])
def test_hungarian_loss_equals_transformers(aux: bool) -> None:
    tr = pytest.importorskip("transformers")
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    gen = torch.Generator().manual_seed(3)
    L, B, Q, C = 3, 3, 6, 4
    logits = torch.randn(L, B, Q, C + 1, generator=gen)
    centres = torch.rand(L, B, Q, 2, generator=gen) * 0.8 + 0.1
    boxes = torch.cat([centres, torch.rand(L, B, Q, 2, generator=gen) * 0.4 + 0.05], -1)
    targets = random_targets(gen, (2, 0, 4), C)
    config = tr.DetrConfig(num_labels=C, decoder_layers=L, auxiliary_loss=aux, eos_coefficient=0.2)
    want_total, want, _ = ForObjectDetectionLoss(
        logits[-1], targets, "cpu", boxes[-1], config, logits if aux else None, boxes if aux else None
    )
    got = set_loss(logits if aux else logits[-1], boxes if aux else boxes[-1], targets, eos_coef=0.2)
    torch.testing.assert_close(got["loss"], want_total, atol=TOL, rtol=TOL)
    assert set(got) - {"loss"} == set(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value.reshape(()).to(got[key].dtype), atol=TOL, rtol=TOL, msg=key)


def test_model_loss_runs_every_decoder_layer_and_backpropagates() -> None:
    model = edifice.build("detr", **TINY).train()
    images, mask = padded_batch()
    targets = random_targets(torch.Generator().manual_seed(0), (1, 2), 3)
    targets = [{"labels": t["class_labels"], "boxes": t["boxes"]} for t in targets]
    losses = model.loss(images, targets, pixel_mask=mask)
    assert {"loss_ce", "loss_ce_0", "loss_giou_0"} <= set(losses)
    losses["loss"].backward()
    assert model.query_embed.weight.grad is not None and model.query_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.stages[:2].parameters())  # stem and layer1 frozen (DETR)
    with pytest.raises(ValueError, match="labels must lie"):
        model.loss(images, [{"labels": torch.tensor([3]), "boxes": torch.rand(1, 4)}] * 2)


# -- box utilities and matching -------------------------------------------------------------------------------------
def test_box_conversions_and_giou_by_hand() -> None:
    xyxy = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 2.0], [4.0, 4.0, 5.0, 5.0]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy)
    giou = generalized_box_iou(xyxy, xyxy)
    torch.testing.assert_close(giou.diagonal(), torch.ones(3))
    # A=[0,2]^2, B=[1,3]x[1,2]: inter 1, union 4 + 2 - 1 = 5, hull [0,3]x[0,2] = 6 -> 1/5 - 1/6
    torch.testing.assert_close(giou[0, 1], torch.tensor(1 / 5 - 1 / 6))
    # A and C disjoint: IoU 0, hull [0,5]^2 = 25, union 5 -> -20/25
    torch.testing.assert_close(giou[0, 2], torch.tensor(-20 / 25))


def test_hungarian_match_is_the_optimal_assignment() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 5, 4, generator=gen)
    boxes = torch.rand(1, 5, 4, generator=gen) * 0.3 + 0.2
    target = random_targets(gen, (3,), 3)[0]
    (rows, cols),  = hungarian_match(logits, boxes, [target])  # fmt: skip
    prob = logits[0].softmax(-1)
    tb = box_cxcywh_to_xyxy(target["boxes"])
    cost = (
        5 * torch.cdist(boxes[0], target["boxes"], p=1)
        - prob[:, target["class_labels"]]
        - 2 * generalized_box_iou(box_cxcywh_to_xyxy(boxes[0]), tb)
    )
    best = min(sum(cost[q, j] for j, q in enumerate(p)) for p in itertools.permutations(range(5), 3))
    torch.testing.assert_close(cost[rows, cols].sum(), best)


def test_post_process_scales_boxes_and_drops_no_object() -> None:
    logits = torch.tensor([[[0.0, 5.0, 0.0, 9.0], [3.0, 0.0, 0.0, 0.0]]])  # query 0: "no object" wins the softmax
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.5, 0.5, 1.0]]])
    (result,) = post_process(logits, boxes, [(100, 200)])
    assert result["labels"].tolist() == [1, 0]
    torch.testing.assert_close(result["boxes"], torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 0.0, 100.0, 100.0]]))
    (kept,) = post_process(logits, boxes, [(100, 200)], threshold=0.5)
    assert kept["labels"].tolist() == [0]


# -- errors --------------------------------------------------------------------------------------------------------
def test_bad_config_and_converter_input() -> None:
    with pytest.raises(ValueError, match="d_model"):
        edifice.config("detr", d_model=15, n_heads=3)
    with pytest.raises(ValueError, match="norm_position"):
        edifice.config("detr", norm_position="sandwich")
    with pytest.raises(ValueError, match="backbone_channels"):
        edifice.config("detr", backbone_layers=(1, 1), backbone_channels=(8,))
    with pytest.raises(CheckpointError, match="DetrConfig"):
        edifice.convert("transformers.detr", {"x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="ResNetBackbone"):
        edifice.convert("transformers.detr", {"x": torch.zeros(1)}, config={"encoder_attention_heads": 2})


def test_pre_norm_and_grad_checkpointing() -> None:
    model = edifice.build("detr", **TINY, norm_position="pre", dropout=0.0).train()
    images, mask = padded_batch()
    target = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(flag)
        model.loss(images, target, pixel_mask=mask)["loss"].backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


# -- learning ------------------------------------------------------------------------------------------------------
def two_images_with_boxes() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two 32x32 images, each with bright rectangles of known class (by colour channel) on a dark background."""
    images = torch.zeros(2, 3, 32, 32)
    targets = []
    layout = [[(0, 4, 4, 16, 12), (1, 18, 20, 30, 30)], [(2, 8, 2, 24, 14)]]  # (class, x0, y0, x1, y1)
    for i, objects in enumerate(layout):
        labels, boxes = [], []
        for cls, x0, y0, x1, y1 in objects:
            images[i, cls, y0:y1, x0:x1] = 1.0
            labels.append(cls)
            boxes.append([x0 / 32, y0 / 32, x1 / 32, y1 / 32])
        targets.append({"labels": torch.tensor(labels), "boxes": box_xyxy_to_cxcywh(torch.tensor(boxes))})
    return images, targets


@pytest.mark.slow
def test_overfits_two_images_with_known_boxes() -> None:
    torch.manual_seed(0)
    model = edifice.build("detr", **{**TINY, "dropout": 0.0, "frozen_stages": 0, "num_queries": 4}).train()
    images, targets = two_images_with_boxes()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model.loss(images, targets)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    model.eval()
    with torch.no_grad():
        results = model.post_process(model(images=images), [(32, 32)] * 2, threshold=0.5)
    for result, target in zip(results, targets, strict=True):
        assert sorted(result["labels"].tolist()) == sorted(target["labels"].tolist())
        want = box_cxcywh_to_xyxy(target["boxes"]) * 32
        giou = generalized_box_iou(result["boxes"], want)
        assert (giou.max(0).values > 0.5).all(), giou
