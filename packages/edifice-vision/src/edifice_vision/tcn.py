"""``tcn``: the Temporal Convolutional Network (Bai, Kolter & Koltun 2018).

"An Empirical Evaluation of Generic Convolutional and Recurrent Networks for Sequence Modeling",
https://arxiv.org/abs/1803.01271. ``x [B, T, d_in] -> [B, T, channels[-1]]``:

- §3.2, dilated causal convolution: ``F(s) = sum_{i=0}^{k-1} f(i) x_{s - d i}`` (no leakage from the future; the
  left zero padding is the paper's, and the authors' ``Chomp1d`` trick computes the same).
- §3.3 / Figure 1(b), residual block: ``o = Activation(x + F(x))`` with ``F`` = two (weight-normed dilated causal
  conv -> ReLU -> dropout) and a 1x1 convolution on the shortcut when the width changes.
- Dilation ``d = 2^i`` at level ``i``, so the receptive field is ``1 + 2 (k-1) (2^L - 1)`` for ``L`` levels.
- §3.4: weight normalisation on the convolutions (``W = g V / ||V||``, per output channel), spatial dropout omitted
  in favour of the authors' ``nn.Dropout`` (their ``TCN/tcn.py``).

Initialisation follows the authors' ``init_weights``: every convolution's weight ~ N(0, 0.01²); with weight norm we
set ``V`` ~ N(0, 0.01²) and ``g = ||V||``, which is what that code intends (its ``normal_`` on the hooked weight is
overwritten at the first forward, a bug we do not reproduce). Biases keep PyTorch's default.

Deviations: the activation is configurable (ReLU by default, as in the paper); ``causal=False`` centres the
convolutions (non-causal, not stateful). Decoding: :meth:`step` keeps each convolution's last ``d (k-1)`` inputs
(:class:`~edifice_vision._temporal.TemporalState`) and reproduces ``forward`` at every position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor, nn

from edifice.blocks.activations import get_activation
from edifice.config import ArchConfig
from edifice_vision._temporal import TemporalConv1d, TemporalConvNet
from edifice_vision.configs.tcn import TCNConfig

__all__ = ["TCN", "TemporalBlock"]

#: Standard deviation of the convolution weights at initialisation (the authors' ``init_weights``).
INIT_STD = 0.01


class TemporalBlock(nn.Module):
    """Figure 1(b): two dilated causal convolutions with activation and dropout, plus the (1x1) shortcut."""

    def __init__(self, d_in: int, d_out: int, config: TCNConfig, dilation: int) -> None:
        super().__init__()
        k, causal, wn = config.kernel_size, config.causal, config.weight_norm
        self.conv1 = TemporalConv1d(d_in, d_out, k, dilation=dilation, causal=causal, weight_norm=wn)
        self.conv2 = TemporalConv1d(d_out, d_out, k, dilation=dilation, causal=causal, weight_norm=wn)
        # The 1x1 shortcut has no history (K = 1), so it needs no state.
        self.downsample = nn.Linear(d_in, d_out) if d_in != d_out else None
        self.act1, self.act2, self.act = (get_activation(config.activation) for _ in range(3))
        self.drop1, self.drop2 = nn.Dropout(config.dropout), nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convolution weights N(0, 0.01²) (the authors' code), shortcut likewise."""
        self.conv1.reset_parameters(std=INIT_STD)
        self.conv2.reset_parameters(std=INIT_STD)
        if self.downsample is not None:
            self.downsample.reset_parameters()
            nn.init.normal_(self.downsample.weight, 0.0, INIT_STD)

    def forward(self, x: Tensor, apply: Callable[[TemporalConv1d, Tensor], Tensor]) -> Tensor:
        """``x [B, T, d_in]`` -> ``act(x' + F(x))`` ``[B, T, d_out]``, convolutions applied through ``apply``."""
        h = self.drop1(self.act1(apply(self.conv1, x)))
        h = self.drop2(self.act2(apply(self.conv2, h)))
        res = x if self.downsample is None else self.downsample(x)
        out: Tensor = self.act(h + res)
        return out


class TCN(TemporalConvNet):
    """Temporal Convolutional Network: ``len(channels)`` residual blocks, block ``i`` dilated by ``2^i``."""

    config_class: ClassVar[type[ArchConfig]] = TCNConfig
    config: TCNConfig

    def __init__(self, config: TCNConfig) -> None:
        super().__init__(config)
        widths = (config.d_in, *config.channels)
        self.blocks = nn.ModuleList(
            TemporalBlock(widths[i], widths[i + 1], config, dilation=2**i) for i in range(len(config.channels))
        )

    def run(self, x: Tensor, apply: Callable[[TemporalConv1d, Tensor], Tensor]) -> Tensor:
        h = x
        for block in self.blocks:
            h = block(h, apply)
        return h
