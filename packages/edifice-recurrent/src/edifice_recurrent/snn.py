"""``snn``: a multi-layer spiking network of leaky integrate-and-fire (LIF) neurons, trained by surrogate gradients.

Neftci, Mostafa & Zenke, 2019, "Surrogate Gradient Learning in Spiking Neural Networks", IEEE Signal Processing
Magazine 36(6), https://arxiv.org/abs/1901.09948. Each neuron ``i`` of layer ``l`` has a synaptic current ``I`` and a
membrane potential ``U``; the paper's continuous LIF model (``τ_mem dU/dt = -(U - U_rest) + R I`` with the reset term
``S(t)(U_rest - ϑ)``, and ``dI/dt = -I/τ_syn + Σ_j W_ij S_j^(l-1) + Σ_j V_ij S_j^(l)``), with ``U_rest = 0``,
``R = 1`` and one step ``Δt = 1``, is the recurrent network of its §III ("SNNs as RNNs")::

    S_i[n]   = Θ(U_i[n] - ϑ)                                                   spikes (Heaviside)
    I_i[n+1] = α I_i[n] + Σ_j W_ij S_j^(l-1)[n] + Σ_j V_ij S_j^(l)[n]             α = exp(-1/τ_syn)
    U_i[n+1] = β U_i[n] + I_i[n] - ϑ S_i[n]                                     β = exp(-1/τ_mem)

from ``I[0] = U[0] = 0``. ``V`` (``recurrent=True``) is the paper's recurrent SNN; ``tau_syn = 0`` makes ``α = 0``.
``reset="zero"`` replaces the reset term by ``U_i[n+1] = β U_i[n] (1 - S_i[n]) + I_i[n]``. The spike's derivative is
the surrogate ``σ'(U - ϑ)`` in the backward pass only (:mod:`edifice_recurrent._spiking`: SuperSpike's fast
sigmoid by default), so gradients flow through every spike while the forward pass stays exactly binary.

The static input ``x [B, d_in]`` is presented for ``num_timesteps`` steps as ``S^(0)[n]``: ``encoding="constant"``
injects ``x`` itself every step (a constant input current; deterministic), ``"bernoulli"`` spikes with probability
``x`` per step (rate coding; pass a ``generator``). The output is the rate-coded readout of the last layer,
``rates = (1/T) Σ_n S^(L)[n]`` in ``[0, 1]``.

Deviations: the paper fixes no architecture, initialisation or readout (it surveys them); this module uses
PyTorch's default ``nn.Linear`` initialisation and a spiking output layer read out by its firing rate. Currents and
potentials are computed in fp32 even under autocast (a spike is discontinuous in ``U``: bf16 rounding would flip
spikes). Each layer's feed-forward input ``W S^(l-1)`` is one matmul over all steps; only the LIF recurrence runs
step by step.
"""

from __future__ import annotations

import math
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from edifice.config import ArchConfig
from edifice.dtypes import upcast
from edifice.model import Model
from edifice_recurrent._spiking import SpikeRecord, encode, spike
from edifice_recurrent.configs.snn import SNNConfig

__all__ = ["SNN", "LIFLayer", "SpikeRecord"]


class LIFLayer(nn.Module):
    """One layer of LIF neurons: input spikes/currents ``[T, B, d_in]`` -> spikes and potentials ``[T, B, d_out]``."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        tau: float,
        tau_syn: float,
        threshold: float,
        reset: str = "subtract",
        detach_reset: bool = False,
        surrogate: str = "fast_sigmoid",
        slope: float = 10.0,
        recurrent: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if reset not in ("subtract", "zero"):
            raise ValueError(f"LIFLayer: reset must be 'subtract' or 'zero', got {reset!r}")
        if tau <= 0 or tau_syn < 0:
            raise ValueError(f"LIFLayer: need tau > 0 and tau_syn >= 0, got tau={tau}, tau_syn={tau_syn}")
        self.beta = math.exp(-1.0 / tau)  # membrane decay per step
        self.alpha = math.exp(-1.0 / tau_syn) if tau_syn > 0 else 0.0  # synaptic decay per step
        self.threshold, self.reset, self.detach_reset = threshold, reset, detach_reset
        self.surrogate, self.slope = surrogate, slope
        self.fc = nn.Linear(d_in, d_out, bias=bias)  # W (and an optional bias current)
        self.rec = nn.Linear(d_out, d_out, bias=False) if recurrent else None  # V

    def reset_parameters(self) -> None:
        """PyTorch's default Linear init (the paper prescribes none): ``U(-1/√fan_in, 1/√fan_in)``."""
        self.fc.reset_parameters()
        if self.rec is not None:
            self.rec.reset_parameters()

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """``S^(l-1)`` ``[T, B, d_in]`` -> ``(S^(l), U^(l))``, both ``[T, B, d_out]`` in fp32 (fp64 kept)."""
        weight = upcast(self.fc.weight)
        bias = None if self.fc.bias is None else upcast(self.fc.bias)
        drive = F.linear(inputs.to(weight.dtype), weight, bias)  # (T, B, d_out): Σ_j W_ij S_j^(l-1)[n]
        v_weight = None if self.rec is None else upcast(self.rec.weight)
        current = torch.zeros_like(drive[0])  # I[0]  (B, d_out)
        potential = torch.zeros_like(drive[0])  # U[0]
        spikes, potentials = [], []
        for n in range(drive.shape[0]):
            s = spike(potential - self.threshold, self.surrogate, self.slope)  # S[n] = Θ(U[n] - ϑ)
            spikes.append(s)
            potentials.append(potential)
            fired = s.detach() if self.detach_reset else s
            next_current = self.alpha * current + drive[n]
            if v_weight is not None:
                next_current = next_current + F.linear(s, v_weight)  # Σ_j V_ij S_j^(l)[n]
            if self.reset == "subtract":
                potential = self.beta * potential + current - self.threshold * fired
            else:
                potential = self.beta * potential * (1.0 - fired) + current
            current = next_current
        return torch.stack(spikes), torch.stack(potentials)


class SNN(Model):
    """``snn``: LIF layers ``d_in -> hidden_sizes -> d_out`` simulated for ``num_timesteps``; returns output rates."""

    config_class: ClassVar[type[ArchConfig]] = SNNConfig
    config: SNNConfig

    def __init__(self, config: SNNConfig) -> None:
        super().__init__(config)
        sizes = (config.d_in, *config.layer_sizes)
        self.layers = nn.ModuleList(
            LIFLayer(
                sizes[i],
                sizes[i + 1],
                tau=config.tau,
                tau_syn=config.tau_syn,
                threshold=config.threshold,
                reset=config.reset,
                detach_reset=config.detach_reset,
                surrogate=config.surrogate,
                slope=config.surrogate_slope,
                recurrent=config.recurrent,
                bias=config.bias,
            )
            for i in range(len(sizes) - 1)
        )
        self.reset_parameters()

    @property
    def lif_layers(self) -> list[LIFLayer]:
        """The LIF layers, the input side first."""
        return [cast(LIFLayer, layer) for layer in self.layers]

    def reset_parameters(self) -> None:
        """Every layer's initialisation (see :meth:`LIFLayer.reset_parameters`)."""
        for layer in self.lif_layers:
            layer.reset_parameters()

    def simulate(self, x: Tensor, *, generator: torch.Generator | None = None) -> SpikeRecord:
        """Run the network on ``x [B, d_in]`` for ``num_timesteps``; every layer's spikes and potentials."""
        self.check_inputs(x=x)
        c = self.config
        with torch.autocast(x.device.type, enabled=False):  # spikes are discontinuous: keep currents in fp32
            h = encode(x, c.num_timesteps, c.encoding, name=c.arch, generator=generator)  # S^(0): (T, B, d_in)
            spikes, potentials = [], []
            for layer in self.lif_layers:
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    h, u = checkpoint(layer, h, use_reentrant=False)  # (T, B, n_l), recomputed in backward
                else:
                    h, u = layer(h)  # (T, B, n_l)
                spikes.append(h.transpose(0, 1))
                potentials.append(u.transpose(0, 1))
        return SpikeRecord(spikes=spikes, potentials=potentials)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``x [B, d_in]`` -> firing rates of the output neurons ``[B, d_out]``, ``(1/T) Σ_n S^(L)[n]``."""
        record = self.simulate(x, generator=generator)
        return record.spikes[-1].mean(dim=1).to(x.dtype)
