"""``liquid``: liquid time-constant networks (LTC), integrated by an ODE solver, or their closed form (CfC).

Hasani, Lechner, Amini, Rus & Grosu, 2021, "Liquid Time-constant Networks", AAAI 2021,
https://arxiv.org/abs/2006.04439. Each layer is a continuous-time RNN of ``N = d_model`` neurons whose state ``x``
follows eq. (1), a leaky linear ODE gated by a bounded positive nonlinearity ``f`` that also sets the time constant::

    dx/dt = -[1/τ + f(x, I; θ)] ⊙ x + f(x, I; θ) ⊙ A                       (1)
    f(x, I; θ) = σ(γ_r x + γ I + μ)                                        (Algorithm 1: θ = {τ, γ, γ_r, μ}, A)

so each neuron's effective time constant ``τ_sys = τ / (1 + τ f)`` varies with the input (Theorem 1 bounds it to
``[τ / (1 + τ W), τ]``; with ``f ∈ (0, 1)``, ``W = 1``). The input ``I`` is held for the ``dt`` of one input step
while the ODE is integrated by ``integration_steps`` unfolds of size ``h = dt / integration_steps`` with
``solver``:

* ``"fused"`` -- the paper's fused (semi-implicit Euler) step, eq. (3): explicit in ``f``, implicit in ``x``::

      x(t + h) = (x(t) + h f(x(t), I) ⊙ A) / (1 + h (1/τ + f(x(t), I)))

  stable for any ``h``, keeping ``x`` within ``[min(0, A), max(0, A)]`` (Theorem 2);
* ``"euler"`` -- explicit Euler on eq. (1) (first order);
* ``"rk4"`` -- the classical fourth-order Runge-Kutta method on eq. (1).

``solver="cfc"`` replaces the ODE by the closed-form continuous-time cell of Hasani, Lechner, Amini, Liebenwein,
Ray, Tschaikowski, Teschl & Rus, 2022, "Closed-form continuous-time neural networks", Nature Machine Intelligence
4, 992-1003, https://arxiv.org/abs/2106.13898, eq. (10), with three heads on a shared backbone of ``[I; x]``::

    x(t + dt) = σ(-f(x, I; θ_f) dt) ⊙ g(x, I; θ_g) + [1 - σ(-f(x, I; θ_f) dt)] ⊙ h(x, I; θ_h)      (10)
    z = backbone([I; x]) (cfc_backbone_layers × Linear + LeCun tanh)   f = W_f z + b_f   g = tanh(W_g z + b_g)   h = ..

Layers stack like ``torch.nn.LSTM``: layer 0 reads the ``d_in`` input features directly, layer ``l`` the states of
layer ``l - 1`` (dropout in between while training); the output is the last layer's state at every step. ``x(0) = 0``.
The ODE state is fp32. ``step`` continues from a :class:`LiquidState` and reproduces ``forward``.

Deviations: the LTC reference code (and ``ncps.LTCCell``) expands eq. (1) into conductance-based synapses (one
sigmoid, weight and reversal potential per synapse, plus leak and capacitance); this module implements eq. (1) and
Algorithm 1 as written, one ``f`` and one ``A`` per neuron. Initialisation: neither paper states one. The LTC cell
uses PyTorch's default Linear init for ``γ``, ``γ_r``, ``μ = 0``, ``τ = tau_init``, ``A ~ U(-1, 1)`` (eq. 1 per neuron
has no counterpart in ``ncps``' synapse-level ``LTCCell`` to copy). The CfC cell follows the authors' ``ncps``
``CfC`` defaults: a backbone of 128 units with the LeCun tanh ``1.7159 tanh(0.666 x)``, ``xavier_uniform`` on every
weight matrix and PyTorch's default Linear biases (``cfc_backbone_activation="tanh"`` gives the plain tanh). The CfC
gate has
no separate time-offset head (``ncps``'s ``time_b``): it is eq. (10) exactly. Inputs are regularly sampled (one
``dt`` per step); there is no per-step elapsed-time input. Pad steps (``attention_mask``) leave the state unchanged
and output zeros.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from edifice.blocks.backbone import SequenceBackbone
from edifice.config import ArchConfig
from edifice.dtypes import upcast
from edifice.outputs import model_output
from edifice_recurrent.configs.liquid import CFC_ACTIVATIONS, SOLVERS, LiquidConfig

__all__ = ["CfCCell", "LTCCell", "Liquid", "LiquidLayer", "LiquidState"]


@model_output
class LiquidState:
    """Decoding state of one liquid layer, updated in place by ``step``."""

    h: Tensor
    """The neurons' state ``x(t)`` ``[B, d_model]``, fp32."""


class LTCCell(nn.Module):
    """The LTC neurons of eq. (1): ``f = σ(γ_r x + γ I + μ)``, per-neuron ``τ > 0`` and ``A``; three ODE solvers."""

    def __init__(self, d_in: int, d_hidden: int, *, tau_init: float = 1.0) -> None:
        super().__init__()
        self.tau_init = tau_init
        self.input_proj = nn.Linear(d_in, d_hidden)  # γ I + μ
        self.recurrent = nn.Linear(d_hidden, d_hidden, bias=False)  # γ_r x
        self.log_tau = nn.Parameter(torch.empty(d_hidden))  # τ = exp(log_tau) > 0
        self.A = nn.Parameter(torch.empty(d_hidden))  # the bias vector A of eq. (1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default Linear init for ``γ``, ``γ_r``; ``μ = 0``; ``τ = tau_init``; ``A ~ U(-1, 1)`` (module docstring)."""
        self.input_proj.reset_parameters()
        self.recurrent.reset_parameters()
        with torch.no_grad():
            nn.init.zeros_(self.input_proj.bias)
            self.log_tau.fill_(math.log(self.tau_init))
            self.A.uniform_(-1.0, 1.0)

    def drive(self, inputs: Tensor) -> Tensor:
        """``γ I + μ`` for every step at once, ``[B, T, d_in] -> [B, T, N]`` in fp32 (fp64 kept)."""
        return upcast(self.input_proj(inputs))

    def constants(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(γ_rᵀ, 1/τ, A)`` in the state's precision, computed once per sequence rather than per unfold."""
        return upcast(self.recurrent.weight).T, torch.exp(-upcast(self.log_tau)), upcast(self.A)

    def derivative(self, x: Tensor, drive: Tensor, constants: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """The right-hand side of eq. (1), ``-[1/τ + f] ⊙ x + f ⊙ A`` with ``f = σ(γ_r x + γ I + μ)``, ``[B, N]``."""
        gamma_r_t, inv_tau, a = constants
        f = torch.sigmoid(drive + x @ gamma_r_t)
        return -(inv_tau + f) * x + f * a

    def advance(
        self,
        x: Tensor,
        drive: Tensor,
        *,
        solver: str,
        steps: int,
        dt: float,
        constants: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The state after one input step of duration ``dt`` (input held), in ``steps`` unfolds of ``solver``."""
        gamma_r_t, inv_tau, a = k = self.constants() if constants is None else constants
        h = dt / steps
        if solver == "fused":
            for _ in range(steps):
                f = torch.sigmoid(drive + x @ gamma_r_t)
                x = (x + h * f * a) / (1.0 + h * (inv_tau + f))  # eq. (3)
        elif solver == "euler":
            for _ in range(steps):
                x = x + h * self.derivative(x, drive, k)
        elif solver == "rk4":
            for _ in range(steps):
                k1 = self.derivative(x, drive, k)
                k2 = self.derivative(x + 0.5 * h * k1, drive, k)
                k3 = self.derivative(x + 0.5 * h * k2, drive, k)
                k4 = self.derivative(x + h * k3, drive, k)
                x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        else:
            raise ValueError(f"LTCCell: solver must be 'fused', 'euler' or 'rk4', got {solver!r}")
        return x


def backbone_activation(x: Tensor, name: str) -> Tensor:
    """The CfC backbone's nonlinearity: ``ncps``' LeCun tanh ``1.7159 tanh(0.666 x)`` (LeCun et al. 1998) or tanh."""
    return 1.7159 * torch.tanh(0.666 * x) if name == "lecun_tanh" else torch.tanh(x)


class CfCCell(nn.Module):
    """The closed-form continuous-time cell of eq. (10): a ``[I; x]`` backbone and the heads ``f``, ``g``, ``h``."""

    def __init__(
        self, d_in: int, d_hidden: int, *, units: int = 128, layers: int = 1, activation: str = "lecun_tanh"
    ) -> None:
        super().__init__()
        if activation not in CFC_ACTIVATIONS:
            raise ValueError(f"CfCCell: activation must be one of {', '.join(CFC_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        dims = [d_in + d_hidden] + [units] * layers
        self.backbone = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(layers))
        self.head_f = nn.Linear(dims[-1], d_hidden)  # f: the (liquid) time-constant head
        self.head_g = nn.Linear(dims[-1], d_hidden)  # g: the state at t -> 0 side of the gate
        self.head_h = nn.Linear(dims[-1], d_hidden)  # h: the state the gate opens towards as t grows
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As ``ncps``' ``CfCCell.init_weights``: ``xavier_uniform`` weights, PyTorch's default Linear biases."""
        for module in (*self.backbone, self.head_f, self.head_g, self.head_h):
            module.reset_parameters()
            nn.init.xavier_uniform_(module.weight)

    def drive(self, inputs: Tensor) -> Tensor:
        """The inputs ``I`` themselves (the backbone reads ``[I; x]`` each step), as fp32 (fp64 kept)."""
        return upcast(inputs)

    def constants(self) -> None:
        """Nothing to precompute per sequence (the heads are applied as layers)."""

    def advance(
        self,
        x: Tensor,
        drive: Tensor,
        *,
        solver: str = "cfc",
        steps: int = 1,
        dt: float = 1.0,
        constants: object = None,
    ) -> Tensor:
        """Eq. (10) at elapsed time ``dt`` from the state ``x [B, N]`` and the step's input ``drive [B, d_in]``."""
        z = torch.cat([drive, x], dim=-1)  # (B, d_in + N)
        for layer in self.backbone:
            linear = cast(nn.Linear, layer)
            z = backbone_activation(linear(z.to(linear.weight.dtype)), self.activation)
        z = z.to(self.head_f.weight.dtype)
        f = upcast(self.head_f(z))
        g = torch.tanh(upcast(self.head_g(z)))
        h = torch.tanh(upcast(self.head_h(z)))
        gate = torch.sigmoid(-f * dt)  # σ(-f t)
        return gate * g + (1.0 - gate) * h


class LiquidLayer(nn.Module):
    """One LTC or CfC layer ``[B, T, d_in] -> [B, T, d_model]`` following the sequence-mixer protocol."""

    def __init__(
        self,
        d_in: int,
        d_model: int,
        *,
        solver: str = "fused",
        integration_steps: int = 6,
        dt: float = 1.0,
        tau_init: float = 1.0,
        cfc_units: int = 128,
        cfc_layers: int = 1,
        cfc_activation: str = "lecun_tanh",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"LiquidLayer: solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        self.d_model, self.solver, self.steps, self.dt = d_model, solver, integration_steps, dt
        self.cell: LTCCell | CfCCell
        if solver == "cfc":
            self.cell = CfCCell(d_in, d_model, units=cfc_units, layers=cfc_layers, activation=cfc_activation)
        else:
            self.cell = LTCCell(d_in, d_model, tau_init=tau_init)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        """Reset the cell (see :class:`LTCCell` and :class:`CfCCell`)."""
        self.cell.reset_parameters()

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d_in]`` -> states ``[B, T, d_model]``; ``mask [B, T]`` marks valid steps; ``state`` continues."""
        drive = self.cell.drive(x)  # (B, T, ·) fp32
        constants = self.cell.constants()
        h = drive.new_zeros(x.shape[0], self.d_model) if state is None else state.h.to(drive.dtype, copy=True)
        outs = []
        for t in range(x.shape[1]):
            new = self.cell.advance(
                h, drive[:, t], solver=self.solver, steps=self.steps, dt=self.dt, constants=constants
            )
            if mask is None:
                h = new
                outs.append(new)
            else:
                keep = mask[:, t, None]  # (B, 1): a pad step keeps the state and outputs zeros
                h = torch.where(keep, new, h)
                outs.append(new.masked_fill(~keep, 0.0))
        if state is not None:
            state.h.copy_(h)
        return self.dropout(torch.stack(outs, 1).to(x.dtype))  # type: ignore[no-any-return]

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LiquidState:
        """``x(0) = 0`` ``[B, d_model]`` in fp32 (fp64 for an fp64 model), constant size whatever ``max_len``."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return LiquidState(h=torch.zeros(batch_size, self.d_model, device=device, dtype=work))


class Liquid(SequenceBackbone):
    """``liquid``: ``n_layers`` stacked LTC (or CfC) layers of width ``d_model``; the first reads ``d_in`` directly."""

    config_class: ClassVar[type[ArchConfig]] = LiquidConfig
    config: LiquidConfig

    def __init__(self, config: LiquidConfig) -> None:
        super().__init__(config)
        if config.vocab_size is None:
            self.input_proj = nn.Identity()  # the first layer's γ reads the d_in input features itself
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each layer's initialisation (module docstring), and the default one of the embedding and LM head."""
        for module in (self.embed_tokens, self.input_proj, *self.layers, self.lm_head):
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        self.tie_weights()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index``: the first reads the input features, the others the previous layer's states."""
        c = self.config
        d_in = c.d_in if index == 0 and c.vocab_size is None and c.d_in is not None else c.d_model
        return LiquidLayer(
            d_in,
            c.d_model,
            solver=c.solver,
            integration_steps=c.integration_steps,
            dt=c.dt,
            tau_init=c.tau_init,
            cfc_units=c.cfc_backbone_units,
            cfc_layers=c.cfc_backbone_layers,
            cfc_activation=c.cfc_backbone_activation,
            dropout=c.dropout if index < c.n_layers - 1 else 0.0,
        )

    def build_norm(self) -> nn.Module:
        """No final norm: the output is the last layer's ODE state, as in the paper."""
        return nn.Identity()
