"""``ddim``: Denoising Diffusion Implicit Models (Song et al. 2021, arXiv:2010.02502) on any tensor shape.

Training is DDPM's (the ``diffusion`` entry's L_simple: Theorem 1 shows the DDIM objective equals it up to a
constant for the ε-parameterisation). Sampling follows eq. 12 over a strided sub-sequence τ of the training steps
(§4.2, the "leading" spacing):

``x_{τ_{i-1}} = √ᾱ_{τ_{i-1}} x̂_0 + √(1 - ᾱ_{τ_{i-1}} - σ²) ε_θ + σ z``, ``σ = η √((1-ᾱ_{τ_{i-1}})/(1-ᾱ_{τ_i}))
√(1 - ᾱ_{τ_i}/ᾱ_{τ_{i-1}})`` (eq. 16); η = 0 is the deterministic DDIM, η = 1 DDPM. ``ᾱ`` past the last step is 1.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from edifice.config import ArchConfig
from edifice_generative.configs.ddim import DDIMConfig
from edifice_generative.diffusion import Diffusion
from edifice_generative.samplers import sample_ddim

__all__ = ["DDIM"]


class DDIM(Diffusion):
    """DDIM: DDPM's denoiser and loss, sampled by the generalised steps of eq. 12 with ``eta``."""

    config_class: ClassVar[type[ArchConfig]] = DDIMConfig
    config: DDIMConfig

    @torch.no_grad()
    def sample(
        self,
        batch_size: int,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        class_labels: Tensor | None = None,
        eta: float | None = None,
    ) -> Tensor:
        """``batch_size`` samples by DDIM steps over ``steps`` (default ``sample_steps``); ``eta`` overrides the
        config's."""
        labels = self._labels(batch_size, class_labels)
        device, dtype = self._device_dtype
        c = self.config
        return sample_ddim(
            lambda x, t: self._denoise(x, t, labels),
            self.sample_shape(batch_size),
            self.alphas_cumprod(),
            steps=steps or min(c.sample_steps, c.num_train_timesteps),
            eta=c.eta if eta is None else eta,
            prediction=c.prediction,
            clip_sample=c.clip_sample,
            generator=generator,
            device=device,
            dtype=dtype,
        )
