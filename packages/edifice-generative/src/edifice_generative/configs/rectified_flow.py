"""Config of ``rectified_flow``: rectified flow with reflow (Liu, Gong & Liu 2023), torch-free.

The model is :mod:`edifice_generative.rectified_flow`: flow matching on the straight interpolation
``X_t = t X_1 + (1 - t) X_0`` (eq. 1), plus ``reflow_pairs`` that draws the coupling (Z_0, Z_1) of a trained flow
for the next rectification (§2.2).
"""

from __future__ import annotations

import dataclasses

from edifice import ArchSpec, Paper, field
from edifice_generative.configs._denoising import TINY_UNET, DenoisingConfig
from edifice_generative.configs.flow_matching import flow_spec_kwargs

__all__ = ["LIU_2023", "SPECS", "RectifiedFlowConfig"]

LIU_2023 = Paper(
    "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow",
    "Liu, Gong & Liu",
    2023,
    "2209.03003",
)


@dataclasses.dataclass(kw_only=True)
class RectifiedFlowConfig(DenoisingConfig):
    """Rectified flow: velocity regression on straight noise-to-data lines; reflow straightens the coupling."""

    arch: str = field("rectified_flow", "Registry name of the architecture this config builds.")
    sample_steps: int = field(100, "Default number of Euler steps of the sampler (reflowed models need few).")

    def validate(self) -> None:
        """The denoiser's checks; positive sample_steps."""
        super().validate()
        self.check_positive("sample_steps")


SPECS = (
    ArchSpec(
        name="rectified_flow",
        summary="Rectified flow: any-shape velocity network on straight paths, Euler ODE sampler, reflow coupling.",
        paper=LIU_2023,
        config="edifice_generative.configs.rectified_flow:RectifiedFlowConfig",
        model="edifice_generative.rectified_flow:RectifiedFlow",
        tiny={**TINY_UNET, "sample_steps": 2},
        verification="oracle:fp64 loss on the linear interpolation (eq. 1) on hand-made inputs; reflow pairs are "
        "the flow's own ODE endpoints",
        **flow_spec_kwargs(),  # type: ignore[arg-type]
    ),
)
