"""DeiT: a Vision Transformer that learns from a teacher through a distillation token.

Touvron et al. (2021), "Training data-efficient image transformers & distillation through attention", ICML 2021,
https://arxiv.org/abs/2012.12877. Implemented (§4, Fig. 2):

* the distillation token: a learned token after the class token, with its own position embedding, that interacts
  with the class and patch tokens through every self-attention layer;
* its linear head ``head_dist`` beside the class head; at test time "we add the softmax output by the two
  classifiers" -- as timm and the authors' code, the logits are averaged, ``(head(z^cls) + head_dist(z^dist)) / 2``;
* the objectives (:meth:`DeiT.loss`): soft distillation, eq. (2),
  ``(1 - λ) L_CE(ψ(Z_s), y) + λ τ² KL(ψ(Z_t / τ), ψ(Z_s / τ))``, and hard-label distillation, eq. (3),
  ``½ L_CE(ψ(Z_s), y) + ½ L_CE(ψ(Z_s^dist), y_t)`` with ``y_t = argmax Z_t``; the class head learns from the labels
  and the distillation head from the teacher (Z_s of the distillation term is the distillation head's output).

The transformer is :class:`~edifice_vision.vit.VisionTransformer` unchanged (timm's ``deit.py`` is the reference for
parity). Not built: the teacher (any classifier's logits are passed to :meth:`DeiT.loss`), the training recipe
(RandAugment, Mixup, repeated augmentation), and label smoothing inside the hard objective (§5.2's variant).
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_vision.configs.deit import DeiTConfig
from edifice_vision.vit import VisionTransformer

__all__ = ["DeiT", "DeiTHeads"]


@model_output
class DeiTHeads:
    """The two heads' logits: the class token's (``cls_logits``) and the distillation token's (``dist_logits``)."""

    cls_logits: Tensor
    dist_logits: Tensor


class DeiT(VisionTransformer):
    """ViT with a distillation token and head; ``forward`` returns the two heads' averaged logits."""

    config_class: ClassVar[type[ArchConfig]] = DeiTConfig
    config: DeiTConfig
    num_extra_tokens: ClassVar[int] = 1

    def __init__(self, config: DeiTConfig) -> None:
        super().__init__(config)
        self.head_dist: nn.Module = self._new_head(config.num_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        if not num_classes:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes)
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New class and distillation heads for ``num_classes`` (0: none)."""
        super().reset_classifier(num_classes, global_pool)
        device = next(self.parameters()).device
        self.head_dist = self._new_head(num_classes).to(device)

    def get_classifier(self) -> nn.Module:
        """The class-token head (``head_dist`` is the distillation token's)."""
        return self.head

    def forward_heads(self, images: Tensor) -> DeiTHeads:
        """Both heads' logits ``[B, num_classes]``, for training with :meth:`loss`."""
        self.check_inputs(images=images)
        z = self.head_drop(self.forward_features(images))
        return DeiTHeads(self.head(z[:, 0]), self.head_dist(z[:, 1]))

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """``(head(z^cls) + head_dist(z^dist)) / 2`` (the mean of the two tokens with ``pre_logits``)."""
        cls, dist = self.head_drop(features[:, 0]), self.head_drop(features[:, 1])
        if pre_logits:
            mean: Tensor = (cls + dist) / 2
            return mean
        out: Tensor = (self.head(cls) + self.head_dist(dist)) / 2
        return out

    def loss(self, images: Tensor, labels: Tensor, teacher_logits: Tensor) -> Tensor:
        """The DeiT objective on a batch: eq. (3) (``distillation_type='hard'``) or eq. (2) (``'soft'``)."""
        if not self.config.num_classes:
            raise ValueError(f"{self.arch}: loss() needs a classifier (num_classes > 0)")
        heads = self.forward_heads(images)
        if teacher_logits.shape != heads.dist_logits.shape:
            raise ValueError(
                f"{self.arch}: teacher_logits expected {list(heads.dist_logits.shape)}, "
                f"got {list(teacher_logits.shape)}"
            )
        base = F.cross_entropy(heads.cls_logits, labels)
        if self.config.distillation_type == "hard":
            return 0.5 * base + 0.5 * F.cross_entropy(heads.dist_logits, teacher_logits.argmax(-1))
        tau, lam = self.config.distillation_tau, self.config.distillation_alpha
        kl = F.kl_div(
            F.log_softmax(heads.dist_logits / tau, -1),
            F.log_softmax(teacher_logits / tau, -1),
            reduction="batchmean",
            log_target=True,
        )
        out: Tensor = (1 - lam) * base + lam * tau**2 * kl
        return out
