"""Models of the CLI test plugin (imports torch; the torch-free commands must never import this module)."""

from __future__ import annotations

import torch
from cli_fixture_plugin import TinyCliConfig
from torch import nn

from edifice.model import Model
from edifice.outputs import model_output


class TinyCli(Model):
    """``y = out(relu(proj(x)) * gain) + offset`` with a frozen ``gain`` and a buffer ``offset``."""

    config_class = TinyCliConfig

    def __init__(self, config: TinyCliConfig) -> None:
        super().__init__(config)
        self.proj = nn.Linear(config.d_in, config.d_model)
        self.out = nn.Linear(config.d_model, config.d_out)
        self.gain = nn.Parameter(torch.ones(config.d_model), requires_grad=False)
        self.register_buffer("offset", torch.zeros(config.d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, d_in) -> (B, T, d_out)``."""
        self.check_inputs(x=x)
        return self.out(torch.relu(self.proj(x)) * self.gain) + self.offset


@model_output
class PairOutput:
    """Prediction and auxiliary loss."""

    y: torch.Tensor
    aux_loss: torch.Tensor


class TinyCliPair(TinyCli):
    """TinyCli plus a mean-square auxiliary loss."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> PairOutput:  # type: ignore[override]
        """Prediction and ``mean(y**2)``."""
        y = super().forward(x)
        return PairOutput(y=y, aux_loss=y.pow(2).mean())
