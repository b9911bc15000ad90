"""What the spiking entries (``snn``, ``ann2snn``) share: the surrogate-gradient spike, resets and input coding.

A spike is the Heaviside step of the membrane potential above threshold, ``S = Θ(U - ϑ)`` (``Θ(0) = 1``: a neuron
whose potential reaches the threshold fires). Its derivative is zero almost everywhere, so gradient training replaces
it in the backward pass only by a *surrogate derivative* ``σ'(U - ϑ)`` (Neftci, Mostafa & Zenke 2019, §IV), here:

* ``"fast_sigmoid"`` -- ``σ'(u) = 1 / (1 + k|u|)^2``, the derivative of the fast sigmoid ``u / (1 + k|u|)`` used by
  SuperSpike (Zenke & Ganguli 2018, https://arxiv.org/abs/1705.11146);
* ``"sigmoid"`` -- ``σ'(u) = k s(ku) (1 - s(ku))`` with ``s`` the logistic function.

:class:`SurrogateSpike` is the custom autograd function: its forward is exactly binary, its backward multiplies the
incoming gradient by the surrogate. Input coding turns a static vector ``x [B, d]`` into ``T`` steps of input
``[T, B, d]``: ``"constant"`` repeats ``x`` (a constant input current, deterministic), ``"bernoulli"`` draws a spike
with probability ``x`` per step (rate coding, from a ``generator``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from edifice.dtypes import upcast
from edifice.errors import InputError
from edifice.outputs import model_output

__all__ = ["SpikeRecord", "SurrogateSpike", "encode", "spike", "surrogate_derivative"]


@model_output
class SpikeRecord:
    """Everything one simulation of a spiking network produced, layer by layer (for analysis and tests)."""

    spikes: list[Tensor]
    """Spike trains ``S^(l)`` of every layer, each ``[B, T, n_l]`` (0 or 1)."""
    potentials: list[Tensor]
    """Membrane potentials of every layer at every step, each ``[B, T, n_l]``, fp32 (when: see the model)."""


def surrogate_derivative(u: Tensor, kind: str, slope: float) -> Tensor:
    """The surrogate ``σ'(u)`` of the spike's derivative at ``u = U - ϑ`` (same shape and dtype as ``u``)."""
    if kind == "fast_sigmoid":
        return 1.0 / (1.0 + slope * u.abs()) ** 2
    if kind == "sigmoid":
        s = torch.sigmoid(slope * u)
        return slope * s * (1.0 - s)
    raise ValueError(f"surrogate_derivative: kind must be 'fast_sigmoid' or 'sigmoid', got {kind!r}")


class SurrogateSpike(torch.autograd.Function):
    """``Θ(u)`` forward (exactly 0 or 1), ``grad * σ'(u)`` backward: the surrogate-gradient spike nonlinearity."""

    @staticmethod
    def forward(u: Tensor, kind: str, slope: float) -> Tensor:
        """Heaviside step of ``u = U - ϑ``: 1 where ``u >= 0``, else 0, in ``u``'s dtype."""
        return (u >= 0).to(u.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        """Keep ``u`` and the surrogate's kind and slope for the backward pass."""
        u, kind, slope = inputs
        ctx.save_for_backward(u)
        ctx.kind, ctx.slope = kind, slope

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        """The incoming gradient times the surrogate derivative at ``u`` (nothing for ``kind`` and ``slope``)."""
        (u,) = ctx.saved_tensors
        return grad * surrogate_derivative(u, ctx.kind, ctx.slope), None, None


def spike(u: Tensor, kind: str = "fast_sigmoid", slope: float = 10.0) -> Tensor:
    """Spikes ``Θ(u)`` of ``u = U - ϑ`` with the surrogate derivative ``kind`` of steepness ``slope`` backward."""
    if not (torch.is_grad_enabled() and u.requires_grad):  # no backward pass: the plain step (cheaper to trace)
        return (u >= 0).to(u.dtype)
    out: Tensor = SurrogateSpike.apply(u, kind, slope)
    return out


def encode(x: Tensor, num_steps: int, encoding: str, *, name: str, generator: torch.Generator | None = None) -> Tensor:
    """Input of every step, ``[T, B, d]`` in fp32 (fp64 kept), for a static ``x [B, d]`` (see the module docstring).

    ``"bernoulli"`` needs ``x`` in ``[0, 1]`` (an :class:`~edifice.errors.InputError` naming ``name`` otherwise) and
    draws from ``generator`` (the global RNG when None), one uniform number per step, sample and feature.
    """
    x = upcast(x)
    if encoding == "constant":
        return x.unsqueeze(0).expand(num_steps, *x.shape)
    if encoding == "bernoulli":
        if not torch.compiler.is_compiling() and x.numel() and bool((x < 0).any() | (x > 1).any()):
            lo, hi = float(x.min()), float(x.max())
            raise InputError(
                f"{name}: input 'x' expected values in [0, 1] (spike probabilities, encoding='bernoulli'), "
                f"got values in [{lo:g}, {hi:g}]"
            )
        draws = torch.rand((num_steps, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return (draws < x).to(x.dtype)
    raise ValueError(f"encode: encoding must be 'constant' or 'bernoulli', got {encoding!r}")
