"""``toy_mixer``: a position-wise gated MLP, ``y_t = W_down (silu(W_gate x_t) ⊙ W_up x_t)`` (Shazeer 2020, SwiGLU).

Every position is transformed on its own, so the model is causal and batch-independent by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edifice.model import Model
from edifice_toy.config import ToyMixerConfig


class ToyMixer(Model):
    """Gated MLP applied at every position: x ``[B, T, d_in]`` -> y ``[B, T, d_model]``."""

    config_class = ToyMixerConfig

    def __init__(self, config: ToyMixerConfig) -> None:
        super().__init__(config)
        self.gate_proj = nn.Linear(config.d_in, config.d_hidden, bias=False)
        self.up_proj = nn.Linear(config.d_in, config.d_hidden, bias=False)
        self.down_proj = nn.Linear(config.d_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """SwiGLU at every position."""
        self.check_inputs(x=x)
        y: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, d_model)
        return y
