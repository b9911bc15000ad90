"""``flow_matching``: Flow Matching for Generative Modeling (Lipman et al. 2023, arXiv:2210.02747), any shape.

- Path (eq. 20-22, the OT conditional path): ``x_t = (1 - (1 - σ_min) t) x_0 + t x_1``, x_0 ~ N(0, I) the noise,
  x_1 the data, t ∈ [0, 1]; its conditional velocity is ``u_t = x_1 - (1 - σ_min) x_0``.
- ``loss(batch)``: the CFM loss (eq. 23) ``E_{t ~ U[0,1], x_0, x_1} ‖v_θ(x_t, t) - u_t‖²``.
- ``sample(n, steps=...)``: integrate ``dx/dt = v_θ(x, t)`` from t = 0 (noise) to 1 with uniform Euler steps.

Deviations: the paper evaluates with an adaptive dopri5 solver; we ship fixed-step Euler (the solver diffusers'
``FlowMatchEulerDiscreteScheduler`` implements, which equals ours with σ = 1 - t). ``timestep`` enters the
network scaled by 1000 (the sinusoid's range in DDPM, as SD3's flow models do). The original's action-only
denoiser becomes general (any tensor shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from edifice.config import ArchConfig
from edifice_generative.configs.flow_matching import FlowMatchingConfig
from edifice_generative.denoisers import DenoisingModel
from edifice_generative.losses import flow_matching_loss
from edifice_generative.samplers import sample_euler
from edifice_generative.schedules import flow_path

__all__ = ["FlowMatching"]


class FlowMatching(DenoisingModel):
    """A velocity network on the conditional OT path, trained by CFM, sampled by the Euler ODE."""

    config_class: ClassVar[type[ArchConfig]] = FlowMatchingConfig
    time_scale: ClassVar[float] = 1000.0

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.reset_parameters()

    @property
    def sigma_min(self) -> float:
        """σ_min of the path (0 for rectified flow's straight interpolation)."""
        return float(getattr(self.config, "sigma_min", 0.0))

    def loss(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> Tensor:
        """The CFM loss (eq. 23) on data ``batch['x']``; ``batch`` may fix ``timestep`` ([B] in [0, 1]) and the
        paired ``noise`` x_0 (like x; reflow's coupling), otherwise drawn from ``generator``."""
        x1, labels = self._data(batch)
        n = x1.shape[0]
        t = batch.get("timestep")
        if t is None:
            t = torch.rand(n, generator=generator, device=x1.device, dtype=x1.dtype)
        noise = batch.get("noise")
        if noise is None:
            noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        x_t = flow_path(noise, x1, t, self.sigma_min)
        return flow_matching_loss(self._denoise(x_t, t.to(x1.dtype), labels), noise, x1, self.sigma_min)

    @torch.no_grad()
    def sample(
        self,
        batch_size: int,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        class_labels: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """``batch_size`` samples: Euler integration over ``steps`` (default ``sample_steps``) from ``noise``
        (drawn from ``generator`` unless given)."""
        labels = self._labels(batch_size, class_labels)
        device, dtype = self._device_dtype
        return sample_euler(
            lambda x, t: self._denoise(x, t, labels),
            self.sample_shape(batch_size),
            steps=steps or self.config.sample_steps,  # type: ignore[attr-defined]
            x0=noise,
            generator=generator,
            device=device,
            dtype=dtype,
        )
