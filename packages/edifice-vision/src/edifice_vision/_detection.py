"""What the set-prediction detectors (``detr``, ``rt_detr``) share: boxes, the Hungarian loss, post-processing.

Boxes are ``(cx, cy, w, h)`` relative to the image (the models' output) or ``(x0, y0, x1, y1)`` corners.

* :func:`generalized_box_iou` -- Rezatofighi et al. 2019 (arXiv:1902.09630), Algorithm 1:
  ``GIoU = IoU - |C \\ (A u B)| / |C|`` with ``C`` the smallest box enclosing both.
* :func:`hungarian_match` -- DETR's optimal bipartite matching (Carion et al. 2020, arXiv:2005.12872, Eq. 1), found
  by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the pair cost ``-p(c_i) + L_box`` with
  ``L_box = lambda_iou L_iou + lambda_L1 ||b - b^||_1`` (Eq. 2). As in the authors' ``matcher.py``, the class term is
  ``-p`` (not ``-log p``: "commensurable" with the box terms, §3.1) and ``L_iou = -GIoU`` (the constant 1 dropped).
* :func:`set_loss` -- the Hungarian loss (Eq. 2): cross-entropy over all queries with the "no object" class
  weighted ``eos_coef`` (the paper's down-weighting by 10), plus, on matched pairs, ``lambda_L1 * L1`` and
  ``lambda_iou * (1 - GIoU)``, normalised by the number of target boxes in the batch (authors' ``SetCriterion``),
  summed over the auxiliary outputs of every decoder layer (§3.2, "auxiliary decoding losses").
* :func:`post_process` -- scores, labels and corner boxes in pixels per image (authors' ``PostProcess``).
* :class:`FrozenBatchNorm2d` -- BatchNorm with fixed statistics and affine parameters (DETR freezes the backbone's,
  §A.4 "batch normalization ... frozen"), as buffers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = [
    "FrozenBatchNorm2d",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "freeze_batch_norm",
    "generalized_box_iou",
    "hungarian_match",
    "post_process",
    "set_loss",
]

#: A target per image: ``labels [n]`` (int) and ``boxes [n, 4]`` (cx, cy, w, h in [0, 1]); transformers'
#: ``class_labels`` is accepted for ``labels``.
Target = Mapping[str, Tensor]


# -- boxes ---------------------------------------------------------------------------------------------------------
def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h) -> (x0, y0, x1, y1)`` over the last dimension."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x0, y0, x1, y1) -> (cx, cy, w, h)`` over the last dimension."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union of corner boxes ``[N, 4]`` and ``[M, 4]``: two ``[N, M]`` tensors."""
    inter_wh = (torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, None, :2], boxes2[:, :2])).clamp(
        min=0
    )  # (N, M, 2)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = _area(boxes1)[:, None] + _area(boxes2) - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU ``[N, M]`` of corner boxes (Rezatofighi et al. 2019, Alg. 1); boxes need ``x1 >= x0, y1 >= y0``."""
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if b.dim() != 2 or b.shape[-1] != 4:
            raise ValueError(f"generalized_box_iou: {name} expected [N, 4] corner boxes, got {list(b.shape)}")
    iou, union = box_iou(boxes1, boxes2)
    hull_wh = (torch.max(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, None, :2], boxes2[:, :2])).clamp(
        min=0
    )
    hull = hull_wh[..., 0] * hull_wh[..., 1]  # |C|
    return iou - (hull - union) / hull


# -- the Hungarian loss --------------------------------------------------------------------------------------------
def _labels(target: Target) -> Tensor:
    labels = target.get("labels", target.get("class_labels"))
    if labels is None or "boxes" not in target:
        raise ValueError(f"a detection target needs 'labels' [n] and 'boxes' [n, 4], got keys {sorted(target)}")
    return labels


@torch.no_grad()
def hungarian_match(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[Target],
    *,
    class_cost: float = 1.0,
    bbox_cost: float = 5.0,
    giou_cost: float = 2.0,
) -> list[tuple[Tensor, Tensor]]:
    """The optimal assignment sigma^ of Eq. (1) per image: ``[(query_index [k], target_index [k]), ...]``.

    ``logits [B, Q, C + 1]``, ``boxes [B, Q, 4]`` (cx, cy, w, h). The cost of pairing query ``i`` with target ``j``
    is ``-class_cost p_i(c_j) + bbox_cost ||b_i - b_j||_1 - giou_cost GIoU(b_i, b_j)``; non-finite costs become the
    largest float, so a diverged prediction is matched last instead of crashing the solver.
    """
    B, Q = logits.shape[:2]
    if len(targets) != B:
        raise ValueError(f"hungarian_match: {len(targets)} targets for a batch of {B}")
    prob = logits.flatten(0, 1).float().softmax(-1)  # (B*Q, C+1)
    out_boxes = boxes.flatten(0, 1).float()  # (B*Q, 4)
    labels = torch.cat([_labels(t) for t in targets]).long()
    tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(out_boxes)
    cost = (
        bbox_cost * torch.cdist(out_boxes, tgt_boxes, p=1)
        - class_cost * prob[:, labels]
        - giou_cost * generalized_box_iou(box_cxcywh_to_xyxy(out_boxes), box_cxcywh_to_xyxy(tgt_boxes))
    )
    big = torch.finfo(cost.dtype).max
    cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big).view(B, Q, -1).cpu()
    sizes = [len(t["boxes"]) for t in targets]
    out = []
    for i, c in enumerate(torch.split(cost, sizes, dim=-1)):
        rows, cols = linear_sum_assignment(c[i].numpy())
        out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return out


def _layer_losses(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[Target],
    indices: list[tuple[Tensor, Tensor]],
    num_boxes: float,
    eos_coef: float,
) -> dict[str, Tensor]:
    """The three terms of Eq. (2) for one decoder layer's predictions (and the logged cardinality error)."""
    B, Q, C1 = logits.shape
    device = logits.device
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
    query_idx = torch.cat([src for src, _ in indices]).to(device)
    matched_labels = torch.cat([_labels(t)[tgt.to(device)] for t, (_, tgt) in zip(targets, indices, strict=True)])
    classes = torch.full((B, Q), C1 - 1, dtype=torch.int64, device=device)  # "no object" everywhere ...
    classes[batch_idx, query_idx] = matched_labels.long()  # ... but where a target is matched
    weight = torch.ones(C1, device=device, dtype=logits.dtype)
    weight[-1] = eos_coef
    loss_ce = nn.functional.cross_entropy(logits.transpose(1, 2), classes, weight)
    src_boxes = boxes[batch_idx, query_idx]
    tgt_boxes = torch.cat([t["boxes"][tgt.to(device)] for t, (_, tgt) in zip(targets, indices, strict=True)])
    tgt_boxes = tgt_boxes.to(src_boxes)
    loss_bbox = nn.functional.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes)))
    loss_giou = (1 - giou).sum() / num_boxes
    with torch.no_grad():
        n_pred = (logits.argmax(-1) != C1 - 1).sum(1).float()
        n_true = torch.tensor([float(len(t["boxes"])) for t in targets], device=device)
        cardinality = nn.functional.l1_loss(n_pred, n_true)
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "cardinality_error": cardinality}


def set_loss(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[Target],
    *,
    class_cost: float = 1.0,
    bbox_cost: float = 5.0,
    giou_cost: float = 2.0,
    bbox_loss_weight: float = 5.0,
    giou_loss_weight: float = 2.0,
    eos_coef: float = 0.1,
) -> dict[str, Tensor]:
    """DETR's Hungarian loss (Eq. 2) of predictions from one or more decoder layers.

    ``logits [L, B, Q, C + 1]`` and ``boxes [L, B, Q, 4]`` (or without ``L``: one layer); the last layer is the
    output, the others are auxiliary. Each layer is matched on its own (Eq. 1). Returns ``loss`` (the weighted sum
    over layers: ``loss_ce + bbox_loss_weight loss_bbox + giou_loss_weight loss_giou``) and the unweighted terms
    ``loss_ce``, ``loss_bbox``, ``loss_giou``, ``cardinality_error`` of the last layer, with ``_i`` appended for the
    auxiliary layer ``i`` (transformers' and the authors' names).
    """
    if logits.dim() == 3:
        logits, boxes = logits[None], boxes[None]
    if logits.dim() != 4 or boxes.shape[:-1] != logits.shape[:-1] or boxes.shape[-1] != 4:
        raise ValueError(
            f"set_loss: expected logits [L, B, Q, C+1] and boxes [L, B, Q, 4], got {list(logits.shape)} and "
            f"{list(boxes.shape)}"
        )
    num_boxes = max(float(sum(len(t["boxes"]) for t in targets)), 1.0)
    costs = {"class_cost": class_cost, "bbox_cost": bbox_cost, "giou_cost": giou_cost}
    weights = {"loss_ce": 1.0, "loss_bbox": bbox_loss_weight, "loss_giou": giou_loss_weight}
    out: dict[str, Tensor] = {}
    total = logits.new_zeros(())
    L = logits.shape[0]
    for layer in range(L):
        indices = hungarian_match(logits[layer], boxes[layer], targets, **costs)
        terms = _layer_losses(logits[layer], boxes[layer], targets, indices, num_boxes, eos_coef)
        total = total + sum(weights[k] * terms[k] for k in weights)
        suffix = "" if layer == L - 1 else f"_{layer}"
        out.update({k + suffix: v for k, v in terms.items()})
    out["loss"] = total
    return out


# -- inference -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def post_process(
    logits: Tensor, boxes: Tensor, image_sizes: Tensor | Sequence[tuple[int, int]], *, threshold: float = 0.0
) -> list[dict[str, Tensor]]:
    """Per image: ``scores``, ``labels`` (the best real class of each query) and ``boxes`` (x0, y0, x1, y1 in pixels).

    ``image_sizes`` holds ``(height, width)`` per image. The "no object" logit takes part in the softmax but never
    wins a label (authors' ``PostProcess``); queries scoring below ``threshold`` are dropped.
    """
    sizes = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)
    if sizes.shape != (logits.shape[0], 2):
        raise ValueError(f"post_process: image_sizes expected [{logits.shape[0]}, 2] (height, width)")
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # (B, Q)
    h, w = sizes.unbind(1)
    scale = torch.stack((w, h, w, h), dim=1)[:, None, :]  # (B, 1, 4)
    corners = box_cxcywh_to_xyxy(boxes) * scale
    results = []
    for s, lab, b in zip(scores, labels, corners, strict=True):
        keep = s > threshold
        results.append({"scores": s[keep], "labels": lab[keep], "boxes": b[keep]})
    return results


# -- frozen BatchNorm ----------------------------------------------------------------------------------------------
class FrozenBatchNorm2d(nn.Module):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` with all four as buffers (nothing trains or updates)."""

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def reset_parameters(self) -> None:
        """Identity statistics and affine (a backbone is normally loaded from a pretrained checkpoint)."""
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            getattr(self, name).fill_(value)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``, one scale and shift per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by a :class:`FrozenBatchNorm2d` (statistics kept)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            if child.weight is not None and child.weight.device.type != "meta":
                with torch.no_grad():
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                    if child.running_mean is not None and child.running_var is not None:
                        frozen.running_mean.copy_(child.running_mean)
                        frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module
