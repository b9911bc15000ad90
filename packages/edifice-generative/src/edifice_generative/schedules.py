"""Noise schedules of the generative family, written once: DDPM betas, cumulative alphas, SNR, flow-matching paths.

Conventions (``docs/design/generative.md``):

- **Diffusion time** is a step index ``t ∈ {0, ..., T-1}`` (diffusers' convention; Ho et al. 2020 number the same
  steps ``1..T``): ``ᾱ_t = Π_{s≤t} (1 - β_s)`` and ``q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)`` (Ho et al. eq. 4).
  Schedules are computed in float64 and cast by the caller.
- **Flow time** is ``t ∈ [0, 1]`` with ``t = 0`` the noise ``x_0 ~ N(0, I)`` and ``t = 1`` the data ``x_1``, as in
  Lipman et al. 2023 and Liu et al. 2023 (diffusers' ``FlowMatchEulerDiscreteScheduler`` uses ``σ = 1 - t``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "BETA_SCHEDULES",
    "alphas_cumprod",
    "beta_schedule",
    "broadcast_to",
    "flow_path",
    "flow_target",
    "q_sample",
    "snr",
]

#: The beta schedules :func:`beta_schedule` knows.
BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")


def beta_schedule(
    kind: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, *, max_beta: float = 0.999
) -> Tensor:
    """The betas ``β_0..β_{T-1}`` (float64) of one schedule.

    - ``"linear"``: evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020 §4: 1e-4 to 0.02, T = 1000).
    - ``"scaled_linear"``: evenly spaced in ``√β`` (the latent-diffusion schedule of Rombach et al. 2022).
    - ``"cosine"``: Nichol & Dhariwal 2021 eq. 17: ``ᾱ(t) = f(t)/f(0)``, ``f(t) = cos²((t/T + s)/(1 + s) · π/2)``,
      ``s = 0.008``, ``β_t = min(1 - ᾱ(t+1)/ᾱ(t), max_beta)`` (the clip of §3.2).
    """
    if num_timesteps < 1:
        raise ValueError(f"beta_schedule: num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":
        s = 0.008

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        steps = range(num_timesteps)
        betas = [min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta) for i in steps]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"beta_schedule: kind must be one of {', '.join(BETA_SCHEDULES)}, got {kind!r}")


def alphas_cumprod(betas: Tensor) -> Tensor:
    """``ᾱ_t = Π_{s≤t} (1 - β_s)`` (Ho et al. 2020, notation of eq. 4)."""
    return torch.cumprod(1.0 - betas, dim=0)


def snr(alpha_bar: Tensor) -> Tensor:
    """Signal-to-noise ratio ``SNR(t) = ᾱ_t / (1 - ᾱ_t)`` (Kingma et al. 2021, eq. 2 in this parameterisation)."""
    return alpha_bar / (1.0 - alpha_bar)


def broadcast_to(values: Tensor, like: Tensor) -> Tensor:
    """Per-sample values ``[B]`` reshaped to ``[B, 1, ..., 1]`` to broadcast against ``like`` ``[B, ...]``."""
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


def q_sample(x0: Tensor, noise: Tensor, alpha_bar_t: Tensor) -> Tensor:
    """The forward process ``x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε`` (Ho et al. 2020 eq. 4); ``alpha_bar_t`` is ``[B]``."""
    a = broadcast_to(alpha_bar_t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def flow_path(noise: Tensor, data: Tensor, t: Tensor, sigma_min: float = 0.0) -> Tensor:
    """The conditional OT path ``x_t = (1 - (1 - σ_min) t) x_0 + t x_1`` (Lipman et al. 2023 eq. 20, x_0 the noise).

    With ``σ_min = 0`` it is rectified flow's linear interpolation ``X_t = t X_1 + (1 - t) X_0`` (Liu et al. 2023
    eq. 1). ``t`` is ``[B]`` in ``[0, 1]``.
    """
    tt = broadcast_to(t, data)
    return (1 - (1 - sigma_min) * tt) * noise + tt * data


def flow_target(noise: Tensor, data: Tensor, sigma_min: float = 0.0) -> Tensor:
    """The conditional velocity ``u_t = x_1 - (1 - σ_min) x_0`` of :func:`flow_path` (Lipman et al. 2023 eq. 21/23)."""
    return data - (1 - sigma_min) * noise
