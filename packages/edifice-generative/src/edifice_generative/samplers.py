"""Samplers of the generative family, written once: DDPM ancestral, DDIM with η, and Euler ODE for flows.

Each ``*_step`` is one update on a batch at one time (a Python number shared by the batch); each ``sample_*`` loop
starts from ``N(0, I)`` noise drawn from the ``generator`` and calls a denoiser ``fn(x, t[B]) -> prediction``. Random
draws all come from the ``generator`` (or an explicit ``noise``), never from the global RNG. Time conventions are
those of :mod:`edifice_generative.schedules`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "PREDICTIONS",
    "ddim_step",
    "ddpm_step",
    "diffusion_timesteps",
    "euler_step",
    "predict_epsilon",
    "predict_x0",
    "sample_ddim",
    "sample_ddpm",
    "sample_euler",
]

#: What a diffusion denoiser predicts: the noise ε (Ho et al. 2020), the clean sample x0, or v (Salimans & Ho 2022).
PREDICTIONS = ("epsilon", "x0", "v")

Denoiser = Callable[[Tensor, Tensor], Tensor]


def predict_x0(model_output: Tensor, x_t: Tensor, alpha_bar_t: float | Tensor, prediction: str) -> Tensor:
    """The clean sample implied by the model output: ``x0 = (x_t - √(1-ᾱ) ε) / √ᾱ`` (Ho et al. eq. 15), or
    ``x0 = √ᾱ x_t - √(1-ᾱ) v`` (Salimans & Ho 2022 §4), or the output itself."""
    a = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device)
    if prediction == "epsilon":
        return (x_t - (1 - a).sqrt() * model_output) / a.sqrt()
    if prediction == "x0":
        return model_output
    if prediction == "v":
        return a.sqrt() * x_t - (1 - a).sqrt() * model_output
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")


def predict_epsilon(model_output: Tensor, x_t: Tensor, alpha_bar_t: float | Tensor, prediction: str) -> Tensor:
    """The noise implied by the model output (``ε = (x_t - √ᾱ x0) / √(1-ᾱ)``, or ``ε = √ᾱ v + √(1-ᾱ) x_t``)."""
    a = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device)
    if prediction == "epsilon":
        return model_output
    if prediction == "x0":
        return (x_t - a.sqrt() * model_output) / (1 - a).sqrt()
    if prediction == "v":
        return a.sqrt() * model_output + (1 - a).sqrt() * x_t
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")


def _noise_like(x: Tensor, generator: torch.Generator | None, noise: Tensor | None) -> Tensor:
    if noise is not None:
        return noise
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _alpha_bars(alpha_bar: Tensor, t: int, t_prev: int) -> tuple[float, float]:
    """``(ᾱ_t, ᾱ_prev)`` as Python floats; ``t_prev < 0`` means the data end, ``ᾱ = 1``."""
    return float(alpha_bar[t]), float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0


def ddpm_step(
    model_output: Tensor,
    x_t: Tensor,
    t: int,
    t_prev: int,
    alpha_bar: Tensor,
    *,
    prediction: str = "epsilon",
    clip_sample: float | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """One ancestral step ``x_t -> x_{t_prev}`` of Ho et al. 2020 (Algorithm 2).

    The mean is the posterior mean of eq. 7, ``μ̃ = √ᾱ_prev β/(1-ᾱ_t) x0 + √α (1-ᾱ_prev)/(1-ᾱ_t) x_t`` with
    ``α = ᾱ_t/ᾱ_prev``, ``β = 1 - α`` (so that strided steps are exact); with ``x0`` from the ε-prediction it equals
    eq. 11, ``μ = (x_t - β/√(1-ᾱ_t) ε) / √α``. The variance is the posterior's, ``σ² = β̃ = (1-ᾱ_prev)/(1-ᾱ_t) β``
    (§3.2), and no noise is added on the last step (``t_prev < 0``). ``clip_sample`` clips ``x0`` to
    ``[-c, c]`` (Ho et al.'s released code clips images to [-1, 1]).
    """
    a_t, a_prev = _alpha_bars(alpha_bar, t, t_prev)
    alpha, beta = a_t / a_prev, 1 - a_t / a_prev
    x0 = predict_x0(model_output, x_t, a_t, prediction)
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(alpha) * (1 - a_prev) / (1 - a_t)) * x_t
    if t_prev < 0:
        return mean
    variance = max((1 - a_prev) / (1 - a_t) * beta, 1e-20)
    return mean + math.sqrt(variance) * _noise_like(x_t, generator, noise)


def ddim_step(
    model_output: Tensor,
    x_t: Tensor,
    t: int,
    t_prev: int,
    alpha_bar: Tensor,
    *,
    eta: float = 0.0,
    prediction: str = "epsilon",
    clip_sample: float | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """One generalised step ``x_t -> x_{t_prev}`` of Song et al. 2021, eq. 12 with σ of eq. 16:

    ``x_prev = √ᾱ_prev x0 + √(1 - ᾱ_prev - σ²) ε + σ z``, ``σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_prev)``.
    η = 0 is the deterministic DDIM; η = 1 is DDPM's posterior variance. The direction term uses the model's ε
    (before any clipping of ``x0``), as the authors' code does.
    """
    a_t, a_prev = _alpha_bars(alpha_bar, t, t_prev)
    x0 = predict_x0(model_output, x_t, a_t, prediction)
    eps = predict_epsilon(model_output, x_t, a_t, prediction)
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    out = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
    if eta > 0:
        out = out + sigma * _noise_like(x_t, generator, noise)
    return out


def euler_step(velocity: Tensor, x_t: Tensor, t: float, t_next: float) -> Tensor:
    """One explicit Euler step of the flow ODE ``dx/dt = v(x, t)``: ``x_{t'} = x_t + (t' - t) v``."""
    return x_t + (t_next - t) * velocity


def diffusion_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The ``steps`` sampling times, descending, evenly strided from 0 (DDIM's "leading" spacing, Song et al. §4.2)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}] (num_train_timesteps), got {steps}")
    ratio = num_train_timesteps // steps
    return [i * ratio for i in reversed(range(steps))]


def _start(shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _times(x: Tensor, t: float) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def sample_ddpm(
    fn: Denoiser,
    shape: Sequence[int],
    alpha_bar: Tensor,
    *,
    steps: int,
    prediction: str = "epsilon",
    clip_sample: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Ancestral sampling (Ho et al. Algorithm 2) over ``steps`` evenly strided times of the training schedule."""
    times = diffusion_timesteps(alpha_bar.shape[0], steps)
    x = _start(shape, generator, torch.device(device), dtype)
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else -1
        out = fn(x, _times(x, t))
        x = ddpm_step(out, x, t, t_prev, alpha_bar, prediction=prediction, clip_sample=clip_sample, generator=generator)
    return x


def sample_ddim(
    fn: Denoiser,
    shape: Sequence[int],
    alpha_bar: Tensor,
    *,
    steps: int,
    eta: float = 0.0,
    prediction: str = "epsilon",
    clip_sample: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DDIM sampling (Song et al. eq. 12) over ``steps`` evenly strided times of the training schedule."""
    times = diffusion_timesteps(alpha_bar.shape[0], steps)
    x = _start(shape, generator, torch.device(device), dtype)
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else -1
        out = fn(x, _times(x, t))
        x = ddim_step(
            out, x, t, t_prev, alpha_bar, eta=eta, prediction=prediction, clip_sample=clip_sample, generator=generator
        )
    return x


def sample_euler(
    fn: Denoiser,
    shape: Sequence[int] | None = None,
    *,
    steps: int,
    x0: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Integrate ``dx/dt = v(x, t)`` from ``t = 0`` (noise, drawn unless ``x0`` is given) to ``t = 1`` (data) with
    ``steps`` uniform Euler steps (Lipman et al. 2023 §6 and Liu et al. 2023 §2.1 sample this way)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if x0 is None:
        if shape is None:
            raise ValueError("sample_euler needs a shape or a starting x0")
        x0 = _start(shape, generator, torch.device(device), dtype)
    x = x0
    for i in range(steps):
        t, t_next = i / steps, (i + 1) / steps
        x = euler_step(fn(x, _times(x, t)), x, t, t_next)
    return x
