"""``rectified_flow``: Flow Straight and Fast (Liu, Gong & Liu 2023, arXiv:2209.03003), any tensor shape.

- Rectified flow of a coupling (X_0, X_1) (eq. 1): ``min_v ∫_0^1 E ‖(X_1 - X_0) - v(X_t, t)‖² dt`` with
  ``X_t = t X_1 + (1 - t) X_0``; the independent coupling X_0 ~ N(0, I), X_1 ~ data gives the 1-rectified flow.
- ``sample``: the ODE ``dZ_t = v(Z_t, t) dt`` from Z_0 = noise, uniform Euler steps (§2.1 / the authors' code).
- Reflow (§2.2, Algorithm 1): ``reflow_pairs`` draws (Z_0, Z_1 = ODE_v(Z_0)) from the trained flow; training on
  that coupling (``loss({'noise': Z_0, 'x': Z_1})``) gives the (k+1)-rectified flow, whose paths are straighter so
  that few Euler steps suffice.

Deviation: the authors sample with RK45 for evaluation; we ship fixed-step Euler. ``timestep`` enters the
network scaled by 1000, as in ``flow_matching``. The original's action-only denoiser becomes general.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from edifice.config import ArchConfig
from edifice_generative.configs.rectified_flow import RectifiedFlowConfig
from edifice_generative.flow_matching import FlowMatching

__all__ = ["RectifiedFlow"]


class RectifiedFlow(FlowMatching):
    """Rectified flow: flow matching on straight interpolations, with the reflow coupling."""

    config_class: ClassVar[type[ArchConfig]] = RectifiedFlowConfig
    config: RectifiedFlowConfig

    @torch.no_grad()
    def reflow_pairs(
        self,
        batch_size: int,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        class_labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The coupling (Z_0, Z_1) of this flow: noise and the ODE's endpoint from it, as a ``loss`` batch
        ``{'noise': Z_0, 'x': Z_1}`` (plus ``class_labels`` when given) for the next rectification."""
        device, dtype = self._device_dtype
        z0 = torch.randn(self.sample_shape(batch_size), generator=generator, device=device, dtype=dtype)
        z1 = self.sample(batch_size, steps=steps, class_labels=class_labels, noise=z0)
        pairs = {"noise": z0, "x": z1}
        if class_labels is not None:
            pairs["class_labels"] = class_labels
        return pairs
