"""The ``lora`` and ``dora`` entries: one adapted ``nn.Linear(input_size, output_size)``.

The layer is :class:`edifice_quant.adapters.LoRALinear` / :class:`~edifice_quant.adapters.DoRALinear` (see that
module for the equations: Hu et al. 2021 eq. 3; Liu et al. 2024 eq. 5 with the norm detached, §4.3). The base weight
and bias are frozen, as after :func:`edifice_quant.adapters.apply_adapter`; only the adapter trains.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from edifice import ArchConfig, Model
from edifice_quant.adapters import AdapterLinear, DoRALinear, LoRALinear
from edifice_quant.configs._adapter import AdapterConfig
from edifice_quant.configs.dora import DoRAConfig
from edifice_quant.configs.lora import LoRAConfig

__all__ = ["DoRA", "LoRA"]


class LoRA(Model):
    """``y = W x + b + (alpha / r) B A dropout(x)`` with ``W``, ``b`` frozen."""

    config_class: ClassVar[type[ArchConfig]] = LoRAConfig
    layer_class: type[AdapterLinear] = LoRALinear

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        base = nn.Linear(config.input_size, config.output_size, bias=config.bias)
        self.linear = self.layer_class(base, rank=config.rank, alpha=config.alpha, dropout=config.dropout)
        for p in (self.linear.weight, self.linear.bias):
            if p is not None:
                p.requires_grad_(False)

    def reset_parameters(self) -> None:
        """The base as ``nn.Linear`` initialises itself, then the adapter's own initialisation (B = 0)."""
        nn.Linear.reset_parameters(self.linear)  # type: ignore[arg-type]
        self.linear.unmerge()
        self.linear.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x=x)
        y: torch.Tensor = self.linear(x)
        return y


class DoRA(LoRA):
    """``y = m * (W + dW) x / ||W + dW||_c + b`` with ``W``, ``b`` frozen (``dW = (alpha / r) B A``)."""

    config_class = DoRAConfig
    layer_class = DoRALinear
