"""Config of ``ddim``: Song et al. 2021's implicit sampler over a DDPM-trained denoiser (torch-free).

The model is :mod:`edifice_generative.ddim`: the same denoiser, schedule and L_simple as ``diffusion`` (DDIM's
training objective is DDPM's, §3.2 / Theorem 1); ``sample`` takes DDIM steps (eq. 12) with ``eta``.
"""

from __future__ import annotations

import dataclasses

from edifice import ArchSpec, Paper, field
from edifice_generative.configs._denoising import TINY_MLP
from edifice_generative.configs.diffusion import DiffusionConfig, diffusion_spec_kwargs

__all__ = ["SONG_2021", "SPECS", "DDIMConfig"]

SONG_2021 = Paper("Denoising Diffusion Implicit Models", "Song, Meng & Ermon", 2021, "2010.02502")


@dataclasses.dataclass(kw_only=True)
class DDIMConfig(DiffusionConfig):
    """DDIM: DDPM training, sampled by the non-Markovian generalised steps of eq. 12 (η = 0: deterministic)."""

    arch: str = field("ddim", "Registry name of the architecture this config builds.")
    eta: float = field(0.0, "σ scale of eq. 16: 0 is deterministic DDIM, 1 is DDPM's posterior variance.")
    sample_steps: int = field(50, "Default number of sampling steps (Song et al. evaluate 10 to 1000).")

    def validate(self) -> None:
        """DDPM's checks and eta >= 0."""
        super().validate()
        if self.eta < 0:
            self.fail("eta", f"must be >= 0, got {self.eta}")


SPECS = (
    ArchSpec(
        name="ddim",
        summary="DDIM: DDPM-trained any-shape denoiser sampled by eq. 12 steps with eta (0: deterministic).",
        paper=SONG_2021,
        config="edifice_generative.configs.ddim:DDIMConfig",
        model="edifice_generative.ddim:DDIM",
        tiny={**TINY_MLP, "num_train_timesteps": 100, "sample_steps": 4, "eta": 0.5},
        verification="parity:DDIMScheduler.step of diffusers (eta = 0 and eta > 0, same variance noise); "
        "eta = 1 equals the DDPM posterior step",
        **diffusion_spec_kwargs(),  # type: ignore[arg-type]
    ),
)
