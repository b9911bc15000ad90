"""Config and spec of ``reservoir``: a leaky echo state network with a ridge-regression readout (torch-free).

The model is :class:`edifice_recurrent.reservoir.Reservoir`: a fixed random sparse recurrent reservoir (buffers drawn
from ``seed``, rescaled to exactly ``spectral_radius``) and a linear readout, trained in closed form by
``model.fit(x, y)`` or by gradients. See the model module for the equations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchConfig, ArchSpec, Paper, TensorSpec, field

__all__ = ["SPECS", "ReservoirConfig"]

_T_OUT = "T if output == 'all' else None"


@dataclasses.dataclass(kw_only=True)
class ReservoirConfig(ArchConfig):
    """Leaky-integrator ESN: x(n) = (1-a) x(n-1) + a tanh(W_in [1; u(n)] + W x(n-1)), y(n) = W_out [1; u(n); x(n)]."""

    arch: str = field("reservoir", "Registry name of the architecture this config builds.")
    d_in: int = field(1, "Feature size of the input sequence u [B, T, d_in].")
    reservoir_size: int = field(100, "Number of reservoir units N (the state size).")
    d_out: int = field(1, "Feature size of the readout y.")
    spectral_radius: float = field(0.9, "The reservoir matrix W is rescaled so that max |eigenvalue| is exactly this.")
    input_scaling: float = field(1.0, "Input weights W_in are drawn from U(-input_scaling, input_scaling).")
    bias_scaling: float = field(1.0, "The input bias column of W_in is drawn from U(-bias_scaling, bias_scaling).")
    leak_rate: float = field(1.0, "Leak rate a in (0, 1] of the leaky-integrator units (1: Jaeger's 2001 ESN).")
    sparsity: float = field(0.9, "Fraction of the reservoir weights that are zero, in [0, 1).")
    seed: int = field(0, "Seed of the random reservoir (W_in and W are drawn from it, not from the global RNG).")
    ridge: float = field(1e-6, "Tikhonov regularisation β of the closed-form readout fit.")
    washout: int = field(0, "Initial steps of each sequence the readout fit ignores (the reservoir's transient).")
    readout_input: bool = field(True, "The readout also sees the input u(n) (features [1; u(n); x(n)]).")
    output: Literal["all", "last", "mean"] = field(
        "all", "'all' returns every position; 'last' the last valid one and 'mean' the masked mean, as [B, d_out]."
    )

    aliases: ClassVar[Mapping[str, str]] = {
        "input_size": "d_in",
        "output_size": "d_out",
        "hidden_size": "reservoir_size",
    }

    def validate(self) -> None:
        """Check sizes and scales are positive, the leak rate lies in (0, 1] and the sparsity in [0, 1)."""
        super().validate()
        self.check_positive("d_in", "reservoir_size", "d_out", "spectral_radius", "leak_rate")
        self.check_positive("input_scaling", "bias_scaling", "ridge", "washout", allow_zero=True)
        self.check_range("leak_rate", 0.0, 1.0)
        self.check_range("sparsity", 0.0, 1.0)
        if self.sparsity == 1.0:
            self.fail("sparsity", "must be < 1 (a reservoir without connections has spectral radius 0)")
        self.check_choice("output", ("all", "last", "mean"))
        if self.seed < 0:
            self.fail("seed", "must be >= 0")

    @property
    def n_features(self) -> int:
        """Inputs of the linear readout (besides its bias): ``d_in + reservoir_size`` or ``reservoir_size``."""
        return self.reservoir_size + (self.d_in if self.readout_input else 0)


JAEGER = Paper(
    "The “echo state” approach to analysing and training recurrent neural networks",
    "Jaeger",
    2001,
    url="https://www.ai.rug.nl/minds/uploads/EchoStatesTechRep.pdf",
)

SPECS = (
    ArchSpec(
        name="reservoir",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="Echo state network: fixed sparse random reservoir at a set spectral radius, ridge-regression readout.",
        paper=JAEGER,
        config="edifice_recurrent.configs.reservoir:ReservoirConfig",
        model="edifice_recurrent.reservoir:Reservoir",
        inputs={
            "x": TensorSpec(("B", "T", "d_in"), doc="Input sequence u."),
            "attention_mask": TensorSpec(
                ("B", "T"), dtype="bool", domain="bool", optional=True, doc="Padding mask: True marks a valid position."
            ),
        },
        outputs={"y": TensorSpec(("B", _T_OUT, "d_out"), doc="Readout W_out [1; u(n); x(n)].")},
        tiny={"d_in": 3, "reservoir_size": 32, "d_out": 2},
        causal=True,
        stateful=True,
        variable_length=True,
        verification="property:echo state network: spectral radius exactly as configured, closed-form ridge readout "
        "fits a delayed-recall task, fp64 oracle of the leaky ESN update (Jaeger et al. 2007)",
    ),
)
