"""The torch half of edifice-vision's temporal CNNs: a dense (dilated, weight-normed) 1-D convolution over time with a
rolling-buffer decoding state, and the base model that stacks such layers (``conv1d``, ``tcn``).

:class:`TemporalConv1d` computes, for ``x [B, T, C_in]``,

    y_t = b + sum_{k=0}^{K-1} W[:, :, k] x_{t - d (K-1-k)}          (causal; d the dilation)

so ``W[..., -1]`` meets the current input (``nn.Conv1d``'s layout) and the receptive field of one layer is
``d (K-1) + 1``. The inputs before the sequence come from a state ``[B, C_in, d (K-1)]``, the last ``d (K-1)`` inputs
(oldest first, the layout of :func:`edifice.ops.causal_conv1d_state`, which updates it), so feeding a sequence in
pieces through :meth:`TemporalConv1d.step` reproduces :meth:`TemporalConv1d.forward` on the whole. The convolution is
dense (every output channel mixes every input channel) and dilated, which :func:`edifice.ops.causal_conv1d`, a
depthwise undilated op, does not compute; see ``docs/design/tcn.md``.

Legend: ``B`` batch, ``T`` time, ``C`` channels, ``K`` kernel size, ``d`` dilation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.config import ArchConfig
from edifice.model import Model
from edifice.outputs import model_output
from edifice_vision.configs._temporal import TemporalConfig

__all__ = ["Stepper", "TemporalConv1d", "TemporalConvNet", "TemporalState", "whole"]


@model_output
class TemporalState:
    """Decoding state of a temporal CNN: one rolling input buffer per convolution (constant size)."""

    buffers: list[Tensor]
    """Per convolution, ``[B, C_in, d (K-1)]``: its last ``d (K-1)`` inputs, oldest first."""


class TemporalConv1d(nn.Module):
    """Dense 1-D convolution ``[B, T, C_in] -> [B, T, C_out]`` over time: causal or centred, dilated, weight-normed.

    With ``weight_norm`` the weight is ``W = g * V / ||V||`` per output channel (Salimans & Kingma 2016, eq. 2),
    the reparameterisation TCN applies to every convolution (Bai et al. 2018, §3.4).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        causal: bool = True,
        weight_norm: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, dilation) < 1:
            raise ValueError(
                "TemporalConv1d: in_channels, out_channels, kernel_size and dilation must be >= 1, got "
                f"{in_channels}, {out_channels}, {kernel_size}, {dilation}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation, self.causal = kernel_size, dilation, causal
        self.weight_norm = weight_norm
        if weight_norm:
            self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
            self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1))
        else:
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def history(self) -> int:
        """Past inputs one output sees besides the current one: ``d (K-1)`` (the state's length)."""
        return self.dilation * (self.kernel_size - 1)

    def reset_parameters(self, std: float | None = None) -> None:
        """``nn.Conv1d``'s default U(±1/sqrt(fan_in)), or N(0, std²) when ``std`` is given; weight norm: g = ||V||."""
        fan_in = self.in_channels * self.kernel_size
        bound = 1.0 / math.sqrt(fan_in)
        v = self.weight_v if self.weight_norm else self.weight
        if std is None:
            nn.init.uniform_(v, -bound, bound)
        else:
            nn.init.normal_(v, 0.0, std)
        if self.weight_norm:
            with torch.no_grad():
                self.weight_g.copy_(v.norm(dim=(1, 2), keepdim=True))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def effective_weight(self) -> Tensor:
        """The convolution weight ``[C_out, C_in, K]`` (``g V / ||V||`` under weight norm)."""
        if not self.weight_norm:
            return self.weight
        w: Tensor = self.weight_g * self.weight_v / self.weight_v.norm(dim=(1, 2), keepdim=True)
        return w

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Zeros ``[B, C_in, d (K-1)]``: the inputs before the sequence."""
        ref = self.effective_weight()
        return ref.new_zeros(batch_size, self.in_channels, self.history, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: Tensor | None = None) -> Tensor:
        """Convolve ``x [B, T, C_in]`` (after ``state``'s history when causal); returns ``[B, T, C_out]``."""
        xt = x.transpose(1, 2)  # (B, C_in, T)
        if self.causal:
            history = xt.new_zeros(x.shape[0], self.in_channels, self.history) if state is None else state.to(x.dtype)
            xp = torch.cat([history, xt], dim=-1)  # (B, C_in, d(K-1) + T)
        else:
            left = self.history // 2  # centred ("same") padding; an even span puts the extra tap on the right
            xp = F.pad(xt, (left, self.history - left))
        w = self.effective_weight().to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv1d(xp, w, b, dilation=self.dilation).transpose(1, 2)  # (B, T, C_out)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """``t >= 1`` new inputs ``x [B, t, C_in]`` after ``state``; returns ``(y [B, t, C_out], new state)``."""
        if not self.causal:
            raise RuntimeError("TemporalConv1d.step needs a causal convolution (causal=True)")
        return self.forward(x, state), ops.causal_conv1d_state(x, state, self.history + 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"causal={self.causal}, weight_norm={self.weight_norm}"
        )


class Stepper:
    """Feeds each convolution of one :meth:`TemporalConvNet.step` its buffer, in order, and updates the buffers."""

    def __init__(self, buffers: list[Tensor]) -> None:
        self.buffers = buffers
        self.index = 0

    def __call__(self, conv: TemporalConv1d, h: Tensor) -> Tensor:
        buf = self.buffers[self.index]
        self.index += 1
        y, new = conv.step(h, buf)
        buf.copy_(new)  # in place: the state keeps its tensors (static for CUDA graphs)
        return y


def whole(conv: TemporalConv1d, h: Tensor) -> Tensor:
    """Apply ``conv`` to a whole sequence from zero history (what :meth:`TemporalConvNet.run` gets in forward)."""
    y: Tensor = conv(h)
    return y


class TemporalConvNet(Model):
    """Base of ``conv1d`` and ``tcn``: ``x [B, T, d_in] -> hidden [B, T?, d_out]``, stateful when causal.

    Subclasses build their layers and implement :meth:`run`, which applies every convolution through ``apply``
    (:func:`whole` in ``forward``, a :class:`Stepper` in ``step``) in the order of :meth:`convolutions`.
    """

    config_class: ClassVar[type[ArchConfig]] = TemporalConfig
    config: TemporalConfig

    def convolutions(self) -> list[TemporalConv1d]:
        """Every convolution, in the order :meth:`run` applies them."""
        return [m for m in self.modules() if isinstance(m, TemporalConv1d)]

    def run(self, x: Tensor, apply: Callable[[TemporalConv1d, Tensor], Tensor]) -> Tensor:
        """The network on ``x [B, T, d_in]`` -> ``[B, T, d_out]``, each convolution applied through ``apply``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, d_in]`` -> ``[B, T, d_out]`` (``output='all'``) or pooled ``[B, d_out]``."""
        self.check_inputs(x=x)
        h = self.run(x, whole)
        output = self.config.output
        if output == "last":
            return h[:, -1]
        if output == "mean":
            return h.mean(dim=1)
        if output == "max":
            return h.amax(dim=1)
        return h

    def _require_causal(self) -> None:
        if not self.config.causal:
            raise RuntimeError(f"{self.arch}: init_state/step need causal=True (a centred convolution sees the future)")

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TemporalState:
        """Zero buffers for every convolution (``max_len`` is accepted and unused: the state has constant size)."""
        self._require_causal()
        return TemporalState([c.init_state(batch_size, device=device, dtype=dtype) for c in self.convolutions()])

    def step(self, x: Tensor, state: TemporalState) -> tuple[Tensor, TemporalState]:
        """``t >= 1`` new positions ``x [B, t, d_in]``: returns ``([B, t, d_out], state)``, buffers updated in place.

        The output is per position (what ``forward`` returns with ``output='all'``).
        """
        self._require_causal()
        self.check_inputs(x=x)
        return self.run(x, Stepper(state.buffers)), state
