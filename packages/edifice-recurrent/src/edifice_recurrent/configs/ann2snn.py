"""Config and spec of ``ann2snn``: a ReLU MLP converted to integrate-and-fire neurons (torch-free).

The model is :class:`edifice_recurrent.ann2snn.ANN2SNN`: the trainable ReLU network (``model.ann(x)``) and its spiking
twin, whose weights are rescaled by the data-based normalisation of Diehl et al. (2015) in ``model.prepare(x)``.
See the model module for the equations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchConfig, ArchSpec, Paper, TensorSpec, field
from edifice_recurrent.configs.snn import ENCODINGS, INPUT_DOMAIN, RESETS, SURROGATES

__all__ = ["NORMALIZATIONS", "SPECS", "ANN2SNNConfig"]

#: Weight normalisations of Diehl et al. (2015): from calibration activations, or from the weights alone.
NORMALIZATIONS = ("data", "model")


@dataclasses.dataclass(kw_only=True)
class ANN2SNNConfig(ArchConfig):
    """A ReLU MLP and the integrate-and-fire network it converts to, with weight/threshold balancing."""

    arch: str = field("ann2snn", "Registry name of the architecture this config builds.")
    d_in: int = field(64, "Size of the static input vector x.")
    hidden_sizes: tuple[int, ...] = field((128,), "Hidden ReLU units (IF neurons after conversion) of each layer.")
    d_out: int = field(10, "Output units; the spiking network estimates their ReLU activations.")
    num_timesteps: int = field(100, "Simulation steps of the spiking network (its error falls as they grow).")
    threshold: float = field(1.0, "Firing threshold V_thr of every integrate-and-fire neuron (after normalisation).")
    reset: Literal["zero", "subtract"] = field(
        "zero", "After a spike: reset the potential to 'zero' (the paper) or 'subtract' the threshold."
    )
    normalization: Literal["data", "model"] = field(
        "data",
        "'data': scale each layer by its maximum activation on calibration data (the paper's data-based "
        "normalisation, needs prepare(x)); 'model': by its maximum possible positive input.",
    )
    percentile: float = field(
        100.0, "Percentile of the calibration activations used as their maximum (100: the paper's max)."
    )
    bias: bool = field(False, "Biases in the ReLU layers (the paper trains without; converted as scaled currents).")
    encoding: Literal["constant", "bernoulli"] = field(
        "constant",
        "'constant': x is injected as an input current every step (deterministic); "
        "'bernoulli': input spikes with probability x in [0, 1] each step (rate coding), drawn from `generator`.",
    )
    surrogate: Literal["fast_sigmoid", "sigmoid"] = field(
        "fast_sigmoid", "Surrogate derivative of the spikes, for fine-tuning the converted network by gradients."
    )
    surrogate_slope: float = field(10.0, "Steepness k of the surrogate derivative.")

    aliases: ClassVar[Mapping[str, str]] = {"input_size": "d_in", "output_size": "d_out"}

    def validate(self) -> None:
        """Check sizes are positive, the percentile lies in (0, 100] and the choices are known."""
        super().validate()
        self.check_positive("d_in", "d_out", "num_timesteps", "threshold", "surrogate_slope", "percentile")
        self.check_range("percentile", 0.0, 100.0)
        for size in self.hidden_sizes:
            if size <= 0:
                self.fail("hidden_sizes", "must hold positive layer sizes")
        self.check_choice("reset", RESETS)
        self.check_choice("normalization", NORMALIZATIONS)
        self.check_choice("encoding", ENCODINGS)
        self.check_choice("surrogate", SURROGATES)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Units of every layer, the output layer last."""
        return (*self.hidden_sizes, self.d_out)


DIEHL = Paper(
    "Fast-Classifying, High-Accuracy Spiking Deep Networks Through Weight and Threshold Balancing",
    "Diehl, Neil, Binas, Cook, Liu & Pfeiffer",
    2015,
    url="https://doi.org/10.1109/IJCNN.2015.7280696",
)

SPECS = (
    ArchSpec(
        name="ann2snn",
        family="neuromorphic",
        distribution="edifice-recurrent",
        summary="ReLU MLP converted to integrate-and-fire neurons with data-based weight normalisation; rate-coded.",
        paper=DIEHL,
        config="edifice_recurrent.configs.ann2snn:ANN2SNNConfig",
        model="edifice_recurrent.ann2snn:ANN2SNN",
        inputs={
            "x": TensorSpec(
                ("B", "d_in"), domain=INPUT_DOMAIN, doc="Static input vector, presented for num_timesteps steps."
            )
        },
        outputs={
            "y": TensorSpec(
                ("B", "d_out"),
                doc="The spiking network's estimate of the ReLU network's output: output rates times their scale.",
            )
        },
        tiny={"d_in": 8, "hidden_sizes": (16,), "d_out": 4, "num_timesteps": 8},
        needs_fit=True,
        reasons={
            "needs_fit": "the data-based normalisation (Diehl et al. 2015) scales each layer by its maximum ReLU "
            "activation on calibration data: prepare(x) computes it"
        },
        verification="property:rate-coded output converges to the ReLU network's as num_timesteps grows "
        "(Diehl et al. 2015 data-based normalisation)",
    ),
)
