"""The optimizer and learning-rate schedule every training run shares: AdamW with decoupled weight decay on weight
matrices only, linear warmup, then a cosine, linear or constant schedule.

Weight decay (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", arXiv:1711.05101) is a prior that
pulls weights towards zero. It is applied to the weights of the modules that mix features -- ``nn.Linear``,
convolutions and ``nn.RNNBase`` (LSTM/GRU) matrices -- and to nothing else:

* biases and norm gains: their neutral value is not zero (a norm gain of 0 switches the channel off);
* embeddings (and an LM head tied to them): decay shrinks the rows of rare tokens, which get few gradient updates
  to push back, so they collapse towards zero (minGPT and the GPT-2/3 recipes exclude them too);
* every other raw ``nn.Parameter`` of a mixer (Mamba's ``A_log``, ``dt_bias`` and ``D``, RWKV's token-shift mixes,
  S5's eigenvalues): these parameterise dynamics -- decay rates and time scales -- for which zero is not "no effect"
  (``A_log -> 0`` means a decay of ``exp(-1)`` per step), so decaying them would bias the dynamics. The reference
  Mamba code marks ``A_log`` and ``D`` with ``_no_weight_decay`` for the same reason.

A parameter shared by several modules (a tied LM head) is decayed only if every owner would decay it; any
parameter may opt out with the attribute ``_no_weight_decay = True``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["SCHEDULES", "WarmupSchedule", "build_optimizer", "decayed_parameter_names", "parameter_groups"]

#: Learning-rate schedules after warmup.
SCHEDULES = ("cosine", "linear", "constant")

# Modules whose ``weight`` mixes features: the only parameters weight decay applies to.
_DECAYED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.RNNBase,
)


def _decays(module: nn.Module, name: str, parameter: nn.Parameter) -> bool:
    """Whether ``module``'s own parameter ``name`` is a feature-mixing weight that takes weight decay."""
    if getattr(parameter, "_no_weight_decay", False) or not isinstance(module, _DECAYED_MODULES):
        return False
    if isinstance(module, nn.RNNBase):
        return name.startswith("weight_")  # weight_ih_l0, weight_hh_l0 (biases are bias_*)
    return name == "weight"


def decayed_parameter_names(model: nn.Module) -> set[str]:
    """Names (as ``model.named_parameters()`` gives them) of the parameters that take weight decay."""
    verdicts: dict[int, bool] = {}
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            verdict = _decays(module, name, parameter)
            # A shared (tied) parameter is decayed only if every module owning it would decay it.
            verdicts[id(parameter)] = verdicts.get(id(parameter), True) and verdict
    return {name for name, parameter in model.named_parameters() if verdicts.get(id(parameter), False)}


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], decayed: set[str], weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups ``decay`` and ``no_decay`` of the trainable parameters (empty groups left out; names kept)."""
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": []}
    for name, parameter in named_parameters:
        if parameter.requires_grad:
            groups["decay" if name in decayed else "no_decay"].append(parameter)
    decay = {"decay": weight_decay, "no_decay": 0.0}
    return [{"name": name, "params": params, "weight_decay": decay[name]} for name, params in groups.items() if params]


@dataclasses.dataclass
class WarmupSchedule:
    """The learning-rate multiplier at optimizer step ``s`` (0-based): ``torch.optim.lr_scheduler.LambdaLR``'s lambda.

    Linear warmup ``(s + 1) / warmup_steps`` over the first ``warmup_steps`` steps, then over the remaining steps,
    with progress ``p = (s - warmup_steps) / (steps - warmup_steps)`` in ``[0, 1)``:
    ``cosine``: ``m + (1 - m)(1 + cos(pi p)) / 2``; ``linear``: ``1 - (1 - m) p``; ``constant``: ``1``, where
    ``m = min_lr_ratio``. A dataclass of plain numbers, so ``LambdaLR.state_dict()`` stores it as JSON.
    """

    steps: int
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        low = self.min_lr_ratio
        if self.schedule == "linear":
            return 1.0 - (1.0 - low) * progress
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    decayed: set[str],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    fused: bool,
) -> torch.optim.AdamW:
    """AdamW over the two parameter groups; ``fused`` uses the single-kernel CUDA implementation."""
    groups = parameter_groups(named_parameters, decayed, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
