"""``diffusion``: DDPM (Ho et al. 2020, arXiv:2006.11239) on any tensor shape, with its loss and ancestral sampler.

- Forward process (eq. 4): ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε`` with the config's beta schedule (linear 1e-4..0.02 over
  T = 1000 steps, §4; or the cosine schedule of Nichol & Dhariwal 2021, or scaled-linear).
- ``forward(x, timestep)``: the denoiser's prediction ε_θ(x_t, t) (or x0 / v, ``prediction``), t a 0-based step.
- ``loss(batch)``: L_simple (eq. 14) ``E_{t, ε} ‖ε - ε_θ(x_t, t)‖²`` with ``t ~ U{0..T-1}`` (Algorithm 1), or the x0
  / v targets (v: Salimans & Ho 2022).
- ``sample(n, steps=...)``: ancestral sampling (Algorithm 2) with the posterior variance β̃_t (§3.2, the
  "fixed small" choice); fewer steps than T stride the schedule (each step uses ``ᾱ_t/ᾱ_prev``, exact for strides).

Deviations: the original is image-only with its U-Net; here the denoiser is pluggable (``denoiser='unet'``, the
edifice-vision block that follows Ho et al.'s network, or an MLP for vectors), and t is 0-based as in diffusers
(the paper counts 1..T). The catalogue's Diffusion Policy action denoiser is not reproduced (edifice-rl's remit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from edifice.config import ArchConfig
from edifice_generative.configs.diffusion import DiffusionConfig
from edifice_generative.denoisers import DenoisingModel
from edifice_generative.losses import diffusion_loss
from edifice_generative.samplers import sample_ddpm
from edifice_generative.schedules import alphas_cumprod, beta_schedule, q_sample

__all__ = ["Diffusion"]


class Diffusion(DenoisingModel):
    """DDPM: the denoiser, its noise schedule, L_simple and the ancestral sampler."""

    config_class: ClassVar[type[ArchConfig]] = DiffusionConfig
    config: DiffusionConfig

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def alphas_cumprod(self) -> Tensor:
        """``ᾱ_0..ᾱ_{T-1}`` of the config's schedule, float64 on the CPU (recomputed: nothing to save)."""
        c = self.config
        return alphas_cumprod(beta_schedule(c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end))

    def loss(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> Tensor:
        """L_simple (eq. 14) on clean samples ``batch['x']``; ``batch`` may fix ``timestep`` ([B] int steps) and
        ``noise`` (like x), which are otherwise drawn from ``generator`` (t ~ U{0..T-1}, ε ~ N(0, I))."""
        x0, labels = self._data(batch)
        n = x0.shape[0]
        t = batch.get("timestep")
        if t is None:
            t = torch.randint(0, self.config.num_train_timesteps, (n,), generator=generator, device=x0.device)
        t = t.long()
        noise = batch.get("noise")
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a = self.alphas_cumprod().to(x0.device)[t]
        x_t = q_sample(x0, noise, a)
        out = self._denoise(x_t, t.to(x0.dtype), labels)
        return diffusion_loss(out, x0, noise, a, self.config.prediction)

    @torch.no_grad()
    def sample(
        self,
        batch_size: int,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        class_labels: Tensor | None = None,
    ) -> Tensor:
        """``batch_size`` samples by ancestral sampling (Algorithm 2) over ``steps`` (default ``sample_steps``)."""
        labels = self._labels(batch_size, class_labels)
        device, dtype = self._device_dtype
        c = self.config
        return sample_ddpm(
            lambda x, t: self._denoise(x, t, labels),
            self.sample_shape(batch_size),
            self.alphas_cumprod(),
            steps=steps or min(c.sample_steps, c.num_train_timesteps),
            prediction=c.prediction,
            clip_sample=c.clip_sample,
            generator=generator,
            device=device,
            dtype=dtype,
        )
