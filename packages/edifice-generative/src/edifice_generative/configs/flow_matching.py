"""Config of ``flow_matching``: conditional flow matching with the OT path (Lipman et al. 2023), torch-free.

The model is :mod:`edifice_generative.flow_matching`: ``forward(x, timestep)`` is the velocity v_θ(x_t, t) with
t ∈ [0, 1] (t = 0 noise, t = 1 data); ``loss(batch)`` is the CFM loss (eq. 23) on the OT path (eq. 20-22);
``sample(n, steps=...)`` integrates the ODE from noise with Euler steps.
"""

from __future__ import annotations

import dataclasses

from edifice import ArchSpec, Paper, field
from edifice_generative.configs._denoising import TINY_MLP, DenoisingConfig, denoising_inputs, denoising_outputs

__all__ = ["LIPMAN_2023", "SPECS", "FlowMatchingConfig", "flow_spec_kwargs"]

LIPMAN_2023 = Paper("Flow Matching for Generative Modeling", "Lipman, Chen, Ben-Hamu, Nickel & Le", 2023, "2210.02747")


@dataclasses.dataclass(kw_only=True)
class FlowMatchingConfig(DenoisingConfig):
    """Flow matching: a velocity network regressed on the conditional OT path's velocity, sampled by an ODE."""

    arch: str = field("flow_matching", "Registry name of the architecture this config builds.")
    sigma_min: float = field(0.0, "σ_min of the OT path (eq. 20): the width of the path's end at the data.")
    sample_steps: int = field(100, "Default number of Euler steps of the sampler.")

    def validate(self) -> None:
        """The denoiser's checks; 0 <= sigma_min < 1; positive sample_steps."""
        super().validate()
        self.check_positive("sample_steps")
        if not 0 <= self.sigma_min < 1:
            self.fail("sigma_min", f"must be in [0, 1), got {self.sigma_min}")


def flow_spec_kwargs() -> dict[str, object]:
    """The tensor specs and flags every flow entry shares."""
    return {
        "family": "generative",
        "distribution": "edifice-generative",
        "inputs": denoising_inputs("float[0, 1]", "Flow time t of each sample (0: noise, 1: data)."),
        "outputs": denoising_outputs("The velocity v_θ(x_t, t) of the flow."),
        "requires_blocks": ("unet",),
        "stochastic": True,
    }


SPECS = (
    ArchSpec(
        name="flow_matching",
        summary="Conditional flow matching: any-shape velocity network on the OT path, CFM loss, Euler ODE sampler.",
        paper=LIPMAN_2023,
        config="edifice_generative.configs.flow_matching:FlowMatchingConfig",
        model="edifice_generative.flow_matching:FlowMatching",
        tiny={**TINY_MLP, "num_classes": 3, "sigma_min": 1e-3, "sample_steps": 4},
        verification="oracle:fp64 CFM loss on the OT path (eq. 20-23) on hand-made inputs; "
        "parity:FlowMatchEulerDiscreteScheduler.step of diffusers",
        **flow_spec_kwargs(),  # type: ignore[arg-type]
    ),
)
