"""``ann2snn``: a ReLU network converted to a rate-coded integrate-and-fire (IF) network by weight normalisation.

Diehl, Neil, Binas, Cook, Liu & Pfeiffer, 2015, "Fast-Classifying, High-Accuracy Spiking Deep Networks Through
Weight and Threshold Balancing", IJCNN 2015, https://doi.org/10.1109/IJCNN.2015.7280696. A ReLU network
``a^(l) = max(0, W_l a^(l-1) + b_l)`` (``a^(0) = x``, ReLU on every layer, trained as usual through
:meth:`ANN2SNN.ann`) becomes a network of IF neurons with the same weights; a neuron's firing rate approximates its
ReLU activation. Per step ``t = 1..T`` and layer ``l`` (the paper's simulation: integrate, fire, reset)::

    V_l(t) = V_l(t-1) + W'_l s_{l-1}(t) + b'_l          no leak
    s_l(t) = Θ(V_l(t) - V_thr)                          spike when the potential reaches the threshold
    V_l(t) <- 0 where s_l(t) = 1                        reset to zero (reset="subtract": V_l(t) - V_thr s_l(t))

so that ``rate_l = (1/T) Σ_t s_l(t) ≈ a^(l) / (λ_l V_thr^l)`` while the rates stay below one spike per step. The
weights are *balanced* against the threshold by per-layer scales ``λ_l`` (``λ_0 = 1``)::

    W'_l = W_l λ_{l-1} / λ_l            b'_l = b_l / (λ_l V_thr^(l-1))

**Data-based normalisation** (the paper's algorithm, :meth:`ANN2SNN.prepare` on calibration data): ``λ_l`` is the
larger of the layer's maximum positive weight and its maximum ReLU activation over the data (``percentile < 100``
uses that percentile of the activations instead, Rueckauer et al. 2017, arXiv:1612.04052), so no normalised
activation exceeds one and no neuron needs more than one spike per step. **Model-based normalisation**
(``normalization="model"``): ``λ_l = λ_{l-1} m_l`` with ``m_l`` the layer's largest possible positive input
``max_i Σ_j max(0, W_ij) + max(0, b_i)`` (for inputs in [0, 1]). ``forward`` returns the spiking estimate of the
ReLU network's output, ``y = λ_L V_thr^L rate_L``, which converges to ``ann(x)`` as ``num_timesteps`` grows.

Input: ``encoding="constant"`` injects ``x`` as a constant input current every step (deterministic; the "analog
input" of Rueckauer et al.); ``"bernoulli"`` spikes with probability ``x`` per step (the paper's Poisson rate coding
of pixel intensities, one step = one draw; pass a ``generator``).

Deviations: the paper's networks are trained without biases (``bias=False`` by default); with biases, they are
converted as constant currents scaled as above (Rueckauer et al.). The spikes' derivative is a surrogate (as in
``snn``) so the converted network can be fine-tuned by gradients through time; the paper does not train it. Each
layer's input ``W' s`` is one matmul over all steps (layer by layer equals the paper's step-by-step order, since the
network is feed-forward); potentials are fp32 even under autocast.
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
from edifice_recurrent.configs.ann2snn import ANN2SNNConfig

__all__ = ["ANN2SNN", "SpikeRecord"]


class ANN2SNN(Model):
    """``ann2snn``: ReLU layers ``d_in -> hidden_sizes -> d_out`` and their normalised integrate-and-fire twin."""

    config_class: ClassVar[type[ArchConfig]] = ANN2SNNConfig
    config: ANN2SNNConfig
    scales: Tensor
    fitted: Tensor

    def __init__(self, config: ANN2SNNConfig) -> None:
        super().__init__(config)
        sizes = (config.d_in, *config.layer_sizes)
        self.layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1], bias=config.bias) for i in range(len(sizes) - 1))
        # λ_1..λ_L of the normalisation and whether prepare() has set them (both saved with the weights).
        self.register_buffer("scales", torch.ones(len(self.layers), dtype=torch.float32))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.reset_parameters()

    @property
    def linears(self) -> list[nn.Linear]:
        """The layers of the ReLU network (whose weights the spiking network shares), the input side first."""
        return [cast(nn.Linear, layer) for layer in self.layers]

    def reset_parameters(self) -> None:
        """PyTorch's default Linear init for the ReLU network; the normalisation is cleared (run ``prepare`` again)."""
        for layer in self.linears:
            layer.reset_parameters()
        with torch.no_grad():
            self.scales.fill_(1.0)
            self.fitted.fill_(False)

    # -- the ReLU network ----------------------------------------------------------------------------------------
    def activations(self, x: Tensor) -> list[Tensor]:
        """ReLU activations ``a^(1..L)`` of the analog network for ``x [B, d_in]``, each ``[B, n_l]``."""
        out, h = [], x
        for layer in self.linears:
            h = F.relu(layer(h))
            out.append(h)
        return out

    def ann(self, x: Tensor) -> Tensor:
        """The ReLU network ``x [B, d_in] -> [B, d_out]`` that is trained and then converted (ReLU on every layer)."""
        self.check_inputs(x=x)
        return self.activations(x)[-1]

    # -- conversion ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, x: Tensor | None = None) -> ANN2SNN:
        """Weight normalisation: set ``λ_l`` from calibration inputs ``x [N, d_in]`` (``"data"``) or the weights.

        Re-run it after the ReLU network's weights change. Returns the model.
        """
        c = self.config
        weights = [upcast(layer.weight) for layer in self.linears]
        biases = [None if layer.bias is None else upcast(layer.bias) for layer in self.linears]
        scales, previous = [], 1.0
        if c.normalization == "data":
            if x is None:
                raise ValueError(f"{c.arch}: prepare(x) needs calibration inputs x [N, d_in] (normalization='data')")
            self.check_inputs(x=x)
            acts = self.activations(x.to(self.linears[0].weight.dtype))
            for w, a in zip(weights, acts, strict=True):
                lam = max(float(w.max().clamp(min=0)), _percentile(a, c.percentile))
                previous = lam if lam > 0 else previous  # a dead layer (no positive weight or activity): unscaled
                scales.append(previous)
        else:
            for w, b in zip(weights, biases, strict=True):
                most = w.clamp(min=0).sum(dim=1) + (0 if b is None else b.clamp(min=0))  # (n_l,) max input
                m = float(most.max())
                previous = previous * (m if m > 0 else 1.0)
                scales.append(previous)
        self.scales.copy_(torch.tensor(scales, dtype=torch.float64))
        self.fitted.fill_(True)
        return self

    def snn_parameters(self) -> list[tuple[Tensor, Tensor | None]]:
        """The normalised ``(W'_l, b'_l)`` of the spiking network, fp32 or fp64 (differentiable in ``W_l``, ``b_l``)."""
        theta = self.config.threshold
        out: list[tuple[Tensor, Tensor | None]] = []
        for i, layer in enumerate(self.linears):
            w = upcast(layer.weight)
            scales = self.scales.to(w.dtype)
            before = scales[i - 1] if i > 0 else scales.new_ones(())
            w = w * (before / scales[i])
            b = None if layer.bias is None else upcast(layer.bias) / (scales[i] * theta**i)
            out.append((w, b))
        return out

    # -- the spiking network ---------------------------------------------------------------------------------------
    def simulate(self, x: Tensor, *, generator: torch.Generator | None = None) -> SpikeRecord:
        """Run the IF network on ``x [B, d_in]``; every layer's spikes and potentials (after integration, pre-reset)."""
        self.check_inputs(x=x)
        c = self.config
        if not torch.compiler.is_compiling() and not bool(self.fitted):
            raise RuntimeError(
                f"{c.arch}: call model.prepare(x) with calibration inputs first: the spiking network's weights are "
                "normalised by the ReLU network's activations (Diehl et al. 2015)"
            )
        with torch.autocast(x.device.type, enabled=False):  # spikes are discontinuous: keep potentials in fp32
            h = encode(x, c.num_timesteps, c.encoding, name=c.arch, generator=generator)  # (T, B, d_in)
            spikes, potentials = [], []
            for w, b in self.snn_parameters():
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    h, v = checkpoint(self._layer, h, w, b, use_reentrant=False)  # recomputed in backward
                else:
                    h, v = self._layer(h, w, b)  # (T, B, n_l)
                spikes.append(h.transpose(0, 1))
                potentials.append(v.transpose(0, 1))
        return SpikeRecord(spikes=spikes, potentials=potentials)

    def _layer(self, inputs: Tensor, w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor]:
        """One IF layer: input spikes ``[T, B, n_in]`` -> spikes and potentials ``[T, B, n]``."""
        return self._integrate_and_fire(F.linear(inputs.to(w.dtype), w, b))

    def _integrate_and_fire(self, drive: Tensor) -> tuple[Tensor, Tensor]:
        """IF neurons driven by ``drive [T, B, n]`` (input per step) -> spikes, pre-reset potentials ``[T, B, n]``."""
        c = self.config
        theta = c.threshold
        v = torch.zeros_like(drive[0])  # V(0)  (B, n)
        spikes, potentials = [], []
        for t in range(drive.shape[0]):
            v = v + drive[t]  # integrate (no leak)
            s = spike(v - theta, c.surrogate, c.surrogate_slope)  # fire
            spikes.append(s)
            potentials.append(v)
            v = v - theta * s if c.reset == "subtract" else v * (1.0 - s)  # reset
        return torch.stack(spikes), torch.stack(potentials)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``x [B, d_in]`` -> the spiking estimate of ``ann(x)``, ``λ_L V_thr^L · rate_L``, ``[B, d_out]``."""
        rates = self.simulate(x, generator=generator).spikes[-1].mean(dim=1)  # (B, d_out)
        scale = self.scales[-1] * self.config.threshold ** len(self.layers)
        return (rates * scale).to(x.dtype)


def _percentile(a: Tensor, p: float) -> float:
    """The ``p``-th percentile (nearest rank) of every value in ``a``; ``p = 100`` is the maximum."""
    flat = upcast(a.detach().flatten())
    if flat.numel() == 0:
        return 0.0
    if p >= 100.0:
        return float(flat.max())
    k = max(1, math.ceil(p / 100.0 * flat.numel()))
    return float(flat.kthvalue(k).values)
