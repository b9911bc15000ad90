"""Config and spec of ``snn``: a leaky integrate-and-fire network trained with surrogate gradients (torch-free).

The model is :class:`edifice_recurrent.snn.SNN`: a static input vector ``x [B, d_in]`` is presented for
``num_timesteps`` steps to a stack of LIF layers (``hidden_sizes`` then ``d_out`` neurons); the output is each output
neuron's firing rate. See the model module for the equations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchConfig, ArchSpec, Paper, TensorSpec, field

__all__ = ["ENCODINGS", "INPUT_DOMAIN", "RESETS", "SPECS", "SURROGATES", "SNNConfig"]

#: Surrogate derivatives of the Heaviside spike (the backward pass only).
SURROGATES = ("fast_sigmoid", "sigmoid")
#: What a spike does to the membrane potential.
RESETS = ("subtract", "zero")
#: How the static input vector becomes an input spike train (or current) over the time steps.
ENCODINGS = ("constant", "bernoulli")
#: Domain of the static input ``x``: spike probabilities under Bernoulli encoding, any input current otherwise (the
#: bounds evaluate to None, so nothing is checked).
INPUT_DOMAIN = "float[0 if encoding == 'bernoulli' else None, 1 if encoding == 'bernoulli' else None]"


@dataclasses.dataclass(kw_only=True)
class SNNConfig(ArchConfig):
    """LIF layers (synaptic current + membrane potential) with Heaviside spikes and a surrogate derivative."""

    arch: str = field("snn", "Registry name of the architecture this config builds.")
    d_in: int = field(64, "Size of the static input vector x.")
    hidden_sizes: tuple[int, ...] = field((128,), "Neurons of each hidden LIF layer (empty: one LIF layer).")
    d_out: int = field(10, "Output LIF neurons; the model returns their firing rates.")
    num_timesteps: int = field(25, "Simulation steps the input is presented for (the rate is spikes / steps).")
    tau: float = field(10.0, "Membrane time constant tau_mem in steps: the potential decays by exp(-1/tau).")
    tau_syn: float = field(5.0, "Synaptic time constant in steps: the current decays by exp(-1/tau_syn); 0: none.")
    threshold: float = field(1.0, "Firing threshold ϑ of the membrane potential.")
    reset: Literal["subtract", "zero"] = field(
        "subtract", "After a spike: 'subtract' the threshold (the paper's reset term) or reset the potential to 0."
    )
    detach_reset: bool = field(False, "Stop gradients through the reset term (a common surrogate-gradient trick).")
    surrogate: Literal["fast_sigmoid", "sigmoid"] = field(
        "fast_sigmoid", "Surrogate derivative: 'fast_sigmoid' (SuperSpike, 1/(1+k|u|)^2) or 'sigmoid'."
    )
    surrogate_slope: float = field(10.0, "Steepness k of the surrogate derivative.")
    recurrent: bool = field(False, "Recurrent connections V within each layer (the paper's recurrent SNN).")
    bias: bool = field(False, "A constant bias current per neuron (the paper's model has none).")
    encoding: Literal["constant", "bernoulli"] = field(
        "constant",
        "'constant': x is injected as the input every step (deterministic); "
        "'bernoulli': input spikes with probability x in [0, 1] each step, drawn from `generator`.",
    )

    aliases: ClassVar[Mapping[str, str]] = {"input_size": "d_in", "output_size": "d_out"}

    def validate(self) -> None:
        """Check sizes and time constants are positive and the choices are known."""
        super().validate()
        self.check_positive("d_in", "d_out", "num_timesteps", "tau", "threshold", "surrogate_slope")
        self.check_positive("tau_syn", allow_zero=True)
        for size in self.hidden_sizes:
            if size <= 0:
                self.fail("hidden_sizes", "must hold positive layer sizes")
        self.check_choice("reset", RESETS)
        self.check_choice("surrogate", SURROGATES)
        self.check_choice("encoding", ENCODINGS)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Neurons of every LIF layer, the output layer last."""
        return (*self.hidden_sizes, self.d_out)


NEFTCI = Paper("Surrogate Gradient Learning in Spiking Neural Networks", "Neftci, Mostafa & Zenke", 2019, "1901.09948")

SPECS = (
    ArchSpec(
        name="snn",
        family="neuromorphic",
        distribution="edifice-recurrent",
        summary="Spiking LIF network: Heaviside spikes forward, a surrogate derivative backward; rate-coded readout.",
        paper=NEFTCI,
        config="edifice_recurrent.configs.snn:SNNConfig",
        model="edifice_recurrent.snn:SNN",
        inputs={
            "x": TensorSpec(
                ("B", "d_in"), domain=INPUT_DOMAIN, doc="Static input vector, presented for num_timesteps steps."
            )
        },
        outputs={
            "rates": TensorSpec(
                ("B", "d_out"), domain="float[0, 1]", doc="Firing rate of each output neuron (spikes / steps)."
            )
        },
        tiny={"d_in": 8, "hidden_sizes": (16,), "d_out": 4, "num_timesteps": 8},
        verification="oracle:Neftci et al. 2019 discrete LIF recurrence I[n+1], U[n+1] with S[n] = Θ(U[n] - ϑ) "
        "(fp64 loop) and the surrogate's exact gradient",
    ),
)
