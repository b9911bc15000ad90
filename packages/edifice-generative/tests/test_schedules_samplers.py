"""The family's shared schedules and sampling steps equal diffusers' schedulers on the same inputs."""

from __future__ import annotations

import pytest
import torch

from edifice.testing import signature
from edifice_generative.samplers import ddim_step, ddpm_step, diffusion_timesteps, euler_step
from edifice_generative.schedules import alphas_cumprod, beta_schedule, flow_path, snr

diffusers = pytest.importorskip("diffusers")

_DIFFUSERS_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
_DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "x0": "sample", "v": "v_prediction"}


@pytest.mark.parametrize("kind", sorted(_DIFFUSERS_SCHEDULE))
def test_beta_schedules_equal_diffusers(kind: str) -> None:
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=_DIFFUSERS_SCHEDULE[kind])
    betas = beta_schedule(kind, 1000, 1e-4, 0.02)
    assert betas.dtype == torch.float64
    torch.testing.assert_close(betas.float(), ref.betas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(alphas_cumprod(betas).float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_cosine_schedule_is_nichol_dhariwal_alpha_bar() -> None:
    """ᾱ_t of the cosine schedule is f(t+1)/f(0) with f(t) = cos²((t/T + s)/(1 + s) π/2) (eq. 17) where unclipped."""
    n, s = 50, 0.008
    t = torch.arange(1, n + 1, dtype=torch.float64)
    f = torch.cos((t / n + s) / (1 + s) * torch.pi / 2) ** 2
    f0 = torch.cos(torch.tensor(s / (1 + s) * torch.pi / 2, dtype=torch.float64)) ** 2
    got = alphas_cumprod(beta_schedule("cosine", n))
    torch.testing.assert_close(got[:-1], (f / f0)[:-1], rtol=1e-12, atol=1e-12)  # the last β is clipped to 0.999


def test_snr_and_bad_schedule() -> None:
    a = torch.tensor([0.5, 0.8], dtype=torch.float64)
    torch.testing.assert_close(snr(a), torch.tensor([1.0, 4.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="linear, scaled_linear, cosine"):
        beta_schedule("quadratic", 10)


@signature("diffusion")
@pytest.mark.parametrize("prediction", sorted(_DIFFUSERS_PREDICTION))
@pytest.mark.parametrize("steps", [1000, 10])
def test_ddpm_step_equals_diffusers(prediction: str, steps: int) -> None:
    """DDPM ancestral steps (posterior variance, Ho et al. eq. 11) equal ``DDPMScheduler.step``, same generator seed."""
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000, clip_sample=False, prediction_type=_DIFFUSERS_PREDICTION[prediction]
    )
    ref.set_timesteps(steps)
    a = ref.alphas_cumprod.double()  # the schedule is compared above; this isolates the step from fp32 rounding
    times = diffusion_timesteps(1000, steps)
    assert times == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g)
    out = out.double()
    for i in (0, len(times) // 2, len(times) - 1):
        t, t_prev = times[i], times[i + 1] if i + 1 < len(times) else -1
        want = ref.step(out, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
        got = ddpm_step(out, x, t, t_prev, a, prediction=prediction, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_ddpm_step_clips_like_diffusers() -> None:
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=True, clip_sample_range=1.0)
    a = alphas_cumprod(beta_schedule("linear", 1000))
    x, out = torch.randn(2, 8, dtype=torch.float64) * 3, torch.randn(2, 8, dtype=torch.float64)
    want = ref.step(out, 500, x, generator=torch.Generator().manual_seed(1)).prev_sample
    got = ddpm_step(out, x, 500, 499, a, clip_sample=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@signature("ddim")
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction", sorted(_DIFFUSERS_PREDICTION))
def test_ddim_step_equals_diffusers(eta: float, prediction: str) -> None:
    """DDIM steps (Song et al. eq. 12, σ of eq. 16) equal ``DDIMScheduler.step`` with the same variance noise."""
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type=_DIFFUSERS_PREDICTION[prediction],
    )
    ref.set_timesteps(20)
    a = ref.alphas_cumprod.double()
    times = diffusion_timesteps(1000, 20)
    assert times == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x, out, z = (torch.randn(2, 3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    for i in (0, 9, 19):
        t, t_prev = times[i], times[i + 1] if i + 1 < len(times) else -1
        want = ref.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        got = ddim_step(out, x, t, t_prev, a, eta=eta, prediction=prediction, noise=z)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@signature("ddim")
def test_ddim_eta_one_is_ddpm_posterior() -> None:
    """With η = 1 and one-step strides, DDIM's σ² is DDPM's posterior variance: the two steps agree exactly."""
    a = alphas_cumprod(beta_schedule("linear", 1000))
    x, out, z = (torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in range(3))
    ddim = ddim_step(out, x, 300, 299, a, eta=1.0, noise=z)
    torch.testing.assert_close(ddim, ddpm_step(out, x, 300, 299, a, noise=z))


@signature("flow_matching")
def test_euler_step_equals_flow_match_euler_scheduler() -> None:
    """Euler steps over t ∈ [0, 1] (t = 0 noise) equal ``FlowMatchEulerDiscreteScheduler.step`` with σ = 1 - t."""
    steps = 8
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sigmas = torch.linspace(1.0, 1.0 / steps, steps).numpy()
    ref.set_timesteps(sigmas=sigmas)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=g)
    ours = x.clone()
    for i, t_ref in enumerate(ref.timesteps):
        v = torch.randn(2, 3, 4, generator=g)  # our velocity x1 - x0; diffusers' model predicts noise - data = -v
        x = ref.step(-v, t_ref, x).prev_sample
        t, t_next = 1 - float(ref.sigmas[i]), 1 - float(ref.sigmas[i + 1])
        ours = euler_step(v, ours, t, t_next)
        torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6)


def test_flow_path_endpoints() -> None:
    noise, data = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(flow_path(noise, data, torch.zeros(3)), noise)
    torch.testing.assert_close(flow_path(noise, data, torch.ones(3)), data)
    torch.testing.assert_close(flow_path(noise, data, torch.ones(3), sigma_min=0.1), data + 0.1 * noise)
