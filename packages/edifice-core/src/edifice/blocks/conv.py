"""Causal depthwise 1-D convolution over time, as a module with a decoding state.

The short convolution of H3 (Fu et al. 2023, https://arxiv.org/abs/2212.14052), Mamba (Gu & Dao 2023,
https://arxiv.org/abs/2312.00752, §3.4) and their kin: each channel is filtered on its own by ``K`` taps that see only
the current and past inputs, ``y_t[c] = b[c] + Σ_k w[c, k] x_{t-K+1+k}[c]`` (``w[:, -1]`` meets the current input,
the ``nn.Conv1d(groups=C)`` layout). The computation is :func:`edifice.ops.causal_conv1d`.

The decoding state is the ``K-1`` most recent inputs, ``[B, C, K-1]``; feeding a sequence in pieces through
:meth:`CausalDepthwiseConv1d.step` reproduces :meth:`~CausalDepthwiseConv1d.forward` on the whole.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edifice import ops

__all__ = ["CausalDepthwiseConv1d"]


class CausalDepthwiseConv1d(nn.Module):
    """Depthwise causal convolution ``[B, T, C] -> [B, T, C]`` with weight ``[C, K]`` and optional bias ``[C]``."""

    def __init__(self, channels: int, kernel_size: int, *, bias: bool = True) -> None:
        super().__init__()
        if channels <= 0 or kernel_size <= 0:
            raise ValueError(
                f"CausalDepthwiseConv1d: channels and kernel_size must be > 0, got {channels} and {kernel_size}"
            )
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv1d``'s default: U(±1/sqrt(K)) for weight and bias (fan-in of one depthwise filter is K)."""
        bound = 1.0 / math.sqrt(self.kernel_size)
        # kaiming_uniform_(a=sqrt(5)) as nn.Conv1d uses reduces to this bound.
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The state before any input: zeros ``[B, C, K-1]`` (on the weight's device and dtype unless given)."""
        return torch.zeros(
            batch_size,
            self.channels,
            self.kernel_size - 1,
            device=self.weight.device if device is None else device,
            dtype=self.weight.dtype if dtype is None else dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve a whole sequence ``x [B, T, C]`` from a zero history."""
        return ops.causal_conv1d(x, self.weight, self.bias)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolve ``t >= 1`` new inputs ``x [B, t, C]`` after ``state [B, C, K-1]``; returns ``(y, new state)``."""
        y = ops.causal_conv1d(x, self.weight, self.bias, state)
        return y, ops.causal_conv1d_state(x, state, self.kernel_size)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"
