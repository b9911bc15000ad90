"""Config of ``diffusion``: the DDPM of Ho et al. 2020 on any tensor shape, with its schedule, loss and sampler.

The model is :mod:`edifice_generative.diffusion`. ``forward(x, timestep)`` is the denoiser's prediction (ε by
default); ``loss(batch)`` is L_simple (eq. 14); ``sample(n, steps=...)`` is ancestral sampling (Algorithm 2).
"""

from __future__ import annotations

import dataclasses

from edifice import ArchSpec, Paper, field
from edifice_generative.configs._denoising import (
    TINY_UNET,
    DenoisingConfig,
    denoising_inputs,
    denoising_outputs,
)

__all__ = ["HO_2020", "SPECS", "DiffusionConfig", "diffusion_spec_kwargs"]

HO_2020 = Paper("Denoising Diffusion Probabilistic Models", "Ho, Jain & Abbeel", 2020, "2006.11239")

_SCHEDULES = ("linear", "scaled_linear", "cosine")
_PREDICTIONS = ("epsilon", "x0", "v")


@dataclasses.dataclass(kw_only=True)
class DiffusionConfig(DenoisingConfig):
    """DDPM: a denoiser trained on the noise schedule's forward process, sampled by ancestral steps."""

    arch: str = field("diffusion", "Registry name of the architecture this config builds.")
    num_train_timesteps: int = field(1000, "Diffusion steps T of the training schedule (Ho et al.: 1000).")
    beta_schedule: str = field("linear", "Betas: 'linear' (Ho et al.), 'scaled_linear', 'cosine' (Nichol & Dhariwal).")
    beta_start: float = field(1e-4, "First beta of the linear schedules (Ho et al.: 1e-4).")
    beta_end: float = field(0.02, "Last beta of the linear schedules (Ho et al.: 0.02).")
    prediction: str = field("epsilon", "What the denoiser predicts: 'epsilon' (Ho et al.), 'x0' or 'v'.")
    clip_sample: float | None = field(None, "Clip the predicted x0 to [-c, c] while sampling (images: 1.0); None: off.")
    sample_steps: int = field(1000, "Default sampling steps (strided over the schedule; at most num_train_timesteps).")

    def validate(self) -> None:
        """The denoiser's checks; a known schedule and prediction; 0 < beta_start <= beta_end < 1; steps in range."""
        super().validate()
        self.check_positive("num_train_timesteps", "sample_steps")
        self.check_choice("beta_schedule", _SCHEDULES)
        self.check_choice("prediction", _PREDICTIONS)
        if not 0 < self.beta_start <= self.beta_end < 1:
            self.fail("beta_start", f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.clip_sample is not None and self.clip_sample <= 0:
            self.fail("clip_sample", "must be positive or None")


def diffusion_spec_kwargs() -> dict[str, object]:
    """The tensor specs and flags every diffusion-trained entry shares."""
    return {
        "family": "generative",
        "distribution": "edifice-generative",
        "inputs": denoising_inputs(
            "float[0, num_train_timesteps - 1]", "Diffusion step t of each sample (0-based; fractional allowed)."
        ),
        "outputs": denoising_outputs("The denoiser's prediction (ε, x0 or v, per the config's prediction)."),
        "requires_blocks": ("unet",),
        "stochastic": True,
    }


SPECS = (
    ArchSpec(
        name="diffusion",
        summary="DDPM: any-shape denoiser (MLP or U-Net) with beta schedule, ε/x0/v loss and ancestral sampler.",
        paper=HO_2020,
        config="edifice_generative.configs.diffusion:DiffusionConfig",
        model="edifice_generative.diffusion:Diffusion",
        tiny={**TINY_UNET, "num_classes": 3, "num_train_timesteps": 100, "sample_steps": 4},
        verification="parity:DDPMScheduler.step (ancestral step, posterior variance) and betas/alphas_cumprod of "
        "diffusers; fp64 oracle of L_simple (eq. 14)",
        **diffusion_spec_kwargs(),  # type: ignore[arg-type]
    ),
)
