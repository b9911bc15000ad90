"""Training losses of the generative family, written once: diffusion ε / x0 / v regression, flow-matching velocity.

All are plain mean squared errors over every element (the "simple" losses); the caller draws the times and the noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edifice_generative.samplers import PREDICTIONS
from edifice_generative.schedules import broadcast_to, flow_target

__all__ = ["diffusion_loss", "diffusion_target", "flow_matching_loss"]


def diffusion_target(x0: Tensor, noise: Tensor, alpha_bar_t: Tensor, prediction: str) -> Tensor:
    """What the denoiser regresses on at ``x_t = √ᾱ x0 + √(1-ᾱ) ε``: ``ε`` (Ho et al. 2020 eq. 14), ``x0``, or
    ``v = √ᾱ ε - √(1-ᾱ) x0`` (Salimans & Ho 2022 §4); ``alpha_bar_t`` is ``[B]``."""
    if prediction == "epsilon":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        a = broadcast_to(alpha_bar_t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")


def diffusion_loss(model_output: Tensor, x0: Tensor, noise: Tensor, alpha_bar_t: Tensor, prediction: str) -> Tensor:
    """``L_simple = E ‖target - model_output‖²`` (Ho et al. 2020 eq. 14 for ε), averaged over every element."""
    return _mse(model_output, diffusion_target(x0, noise, alpha_bar_t, prediction))


def flow_matching_loss(velocity: Tensor, noise: Tensor, data: Tensor, sigma_min: float = 0.0) -> Tensor:
    """The conditional flow-matching loss ``E ‖v_θ(x_t, t) - (x_1 - (1 - σ_min) x_0)‖²`` (Lipman et al. 2023 eq. 23;
    with σ_min = 0 rectified flow's eq. 1 objective of Liu et al. 2023)."""
    return _mse(velocity, flow_target(noise, data, sigma_min))


def _mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error in at least float32 (bf16/fp16 outputs are upcast; float64 stays float64)."""
    dtype = torch.promote_types(torch.promote_types(prediction.dtype, target.dtype), torch.float32)
    return torch.mean((prediction.to(dtype) - target.to(dtype)) ** 2)
