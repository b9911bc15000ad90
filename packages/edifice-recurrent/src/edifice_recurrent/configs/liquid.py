"""Config and spec of ``liquid``: liquid time-constant networks (LTC) and their closed-form variant (CfC) (torch-free).

The model is :class:`edifice_recurrent.liquid.Liquid`: a stack of ``n_layers`` continuous-time recurrent layers whose
hidden state follows the LTC ODE, integrated per input step by the paper's fused solver, explicit Euler or RK4 with
``integration_steps`` unfolds -- or, with ``solver="cfc"``, the closed-form CfC cell. See the model module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["CFC_ACTIVATIONS", "SOLVERS", "SPECS", "LiquidConfig"]

#: How a layer advances its state over one input step: three ODE solvers of the LTC equation, or the CfC closed form.
SOLVERS = ("fused", "euler", "rk4", "cfc")
#: Nonlinearities of the CfC backbone: ncps' default LeCun tanh 1.7159·tanh(0.666·x), or the plain tanh.
CFC_ACTIVATIONS = ("lecun_tanh", "tanh")
#: Largest h·λ on the negative real axis for which each explicit solver is stable on dx/dt = -λ x (Euler: 2; the
#: classical RK4: about 2.785). The fused solver is stable for any h (Theorem 2).
EXPLICIT_STABILITY = {"euler": 2.0, "rk4": 2.785}


@dataclasses.dataclass(kw_only=True)
class LiquidConfig(SequenceConfig):
    """Stacked LTC layers (dx/dt = -[1/τ + f(x, I)] ⊙ x + f(x, I) ⊙ A) or CfC layers of width ``d_model``."""

    arch: str = field("liquid", "Registry name of the architecture this config builds.")
    schema_version: int = field(2, "Version of this config's schema; bumped when fields change meaning.")

    #: Schema 2 added ``cfc_backbone_activation`` (ncps' LeCun tanh by default); earlier files used the plain tanh.
    schema_changes: ClassVar[Mapping[int, Mapping[str, Any]]] = {2: {"cfc_backbone_activation": "tanh"}}
    solver: Literal["fused", "euler", "rk4", "cfc"] = field(
        "fused",
        "'fused' (the LTC paper's semi-implicit solver), 'euler', 'rk4', or 'cfc' (the closed-form CfC cell).",
    )
    integration_steps: int = field(6, "ODE solver steps (unfolds) per input step; unused by 'cfc'.")
    dt: float = field(1.0, "Elapsed time of one input step (each unfold covers dt / integration_steps).")
    tau_init: float = field(1.0, "Initial time constant τ of every LTC neuron.")
    cfc_backbone_units: int = field(128, "Width of the CfC backbone shared by its f, g and h heads (ncps: 128).")
    cfc_backbone_layers: int = field(1, "Layers of the CfC backbone (0: the heads read [I; x] directly).")
    cfc_backbone_activation: str = field(
        "lecun_tanh", "Nonlinearity of the CfC backbone: 'lecun_tanh' (ncps' default, 1.7159 tanh(0.666 x)) or 'tanh'."
    )

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "ode_unfolds": "integration_steps",
        "backbone_units": "cfc_backbone_units",
        "backbone_layers": "cfc_backbone_layers",
        "backbone_activation": "cfc_backbone_activation",
    }

    def validate(self) -> None:
        """Check the solver is known, the sizes, steps and times are positive, and an explicit solver starts stable."""
        super().validate()
        self.check_choice("solver", SOLVERS)
        self.check_choice("cfc_backbone_activation", CFC_ACTIVATIONS)
        self.check_positive("integration_steps", "dt", "tau_init", "cfc_backbone_units")
        self.check_positive("cfc_backbone_layers", allow_zero=True)
        bound = EXPLICIT_STABILITY.get(self.solver)
        # Eq. (1) decays at the rate λ = 1/τ + f with f ∈ (0, 1); an explicit unfold of size h diverges once h·λ
        # leaves the solver's stability interval (checked at the initial τ; training may still shrink τ).
        h = self.dt / self.integration_steps
        if bound is not None and h * (1.0 / self.tau_init + 1.0) > bound:
            self.fail(
                "tau_init",
                f"is too small for the explicit {self.solver!r} solver: an unfold h = dt / integration_steps = {h:g} "
                f"needs h (1/tau_init + 1) <= {bound:g}; raise tau_init or integration_steps, or use solver='fused'",
            )


HASANI_LTC = Paper("Liquid Time-constant Networks", "Hasani, Lechner, Amini, Rus & Grosu", 2021, "2006.04439")

SPECS = (
    ArchSpec(
        name="liquid",
        family="liquid",
        distribution="edifice-recurrent",
        summary="Liquid time-constant RNN: an ODE whose time constant depends on the input, or its closed form (CfC).",
        paper=HASANI_LTC,
        config="edifice_recurrent.configs.liquid:LiquidConfig",
        model="edifice_recurrent.liquid:Liquid",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "d_in": 8, "integration_steps": 1},
        causal=True,
        stateful=True,
        variable_length=True,
        verification="oracle:Hasani et al. 2021 eq. 1 (LTC ODE) integrated in fp64 (fused eq. 3, Euler, RK4 "
        "converging at order 4) and the CfC closed form (Hasani et al. 2022 eq. 10)",
    ),
)
