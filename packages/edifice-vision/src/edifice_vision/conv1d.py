"""``conv1d``: the classic 1-D convolutional network over a sequence (LeCun et al. 1998).

"Gradient-Based Learning Applied to Document Recognition", LeCun, Bottou, Bengio & Haffner, Proc. IEEE 1998
(https://doi.org/10.1109/5.726791), §II: convolutional layers of shared weights over local receptive fields, here
along time. ``x [B, T, d_in] -> [B, T, channels[-1]]``; layer ``i`` computes

    h^(i)_t = dropout(act(b + sum_{k=0}^{K_i-1} W_k h^(i-1)_{t-K_i+1+k}))

(causal: zero history before the sequence), or centred ("same") convolutions with ``causal=False``.

Deviations: LeNet-5 interleaves subsampling layers (§II-B); here the time axis is kept (``output`` pools over it at
the end: 'last', 'mean' or 'max', the original Edifice option ``pooling``) so that the causal network is stateful and
:meth:`step` reproduces ``forward`` at every position. The activation is configurable (ReLU by default instead of the
paper's scaled tanh). Weights use PyTorch's ``nn.Conv1d`` initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor, nn

from edifice.blocks.activations import get_activation
from edifice.config import ArchConfig
from edifice_vision._temporal import TemporalConv1d, TemporalConvNet
from edifice_vision.configs.conv1d import Conv1dConfig

__all__ = ["Conv1d"]


class Conv1d(TemporalConvNet):
    """A stack of 1-D convolution -> activation -> dropout layers over time."""

    config_class: ClassVar[type[ArchConfig]] = Conv1dConfig
    config: Conv1dConfig

    def __init__(self, config: Conv1dConfig) -> None:
        super().__init__(config)
        widths = (config.d_in, *config.channels)
        self.convs = nn.ModuleList(
            TemporalConv1d(widths[i], widths[i + 1], k, causal=config.causal) for i, k in enumerate(config.kernel_sizes)
        )
        self.acts = nn.ModuleList(get_activation(config.activation) for _ in config.channels)
        self.dropout = nn.Dropout(config.dropout)

    def run(self, x: Tensor, apply: Callable[[TemporalConv1d, Tensor], Tensor]) -> Tensor:
        h = x
        for conv, act in zip(self.convs, self.acts, strict=True):
            h = self.dropout(act(apply(conv, h)))  # type: ignore[arg-type]  # ModuleList items are TemporalConv1d
        return h
