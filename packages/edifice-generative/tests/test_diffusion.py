"""``diffusion`` (DDPM) and ``ddim``: an fp64 oracle of L_simple and its x0 / v targets, the samplers' loops.

The oracle recomputes the forward process with the linear schedule written out here (ᾱ_t as a running product of
``1 - β_s``, β evenly spaced 1e-4..0.02, Ho et al. §4) and the regression targets from their formulas; a generic
schedule (ᾱ linear in t) or a generic target (the noisy input) gives another loss and fails. Sampler parity with
diffusers' schedulers is in ``test_schedules_samplers.py``.
"""

from __future__ import annotations

import pytest
import torch

import edifice
from edifice.errors import ConfigError
from edifice.testing import signature
from edifice_generative.samplers import ddim_step, ddpm_step, diffusion_timesteps

T_TRAIN = 50


def _model(arch: str, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"denoiser": "mlp", "channels": 3, "hidden_size": 16, "n_layers": 1, "num_train_timesteps": T_TRAIN}
    return edifice.build(arch, **{**kw, **overrides}).double().eval()


def _alpha_bar_oracle(t: torch.Tensor) -> torch.Tensor:
    betas = [1e-4 + (0.02 - 1e-4) * s / (T_TRAIN - 1) for s in range(T_TRAIN)]
    out, running = [], 1.0
    for b in betas:
        running *= 1 - b
        out.append(running)
    return torch.tensor(out, dtype=torch.float64)[t]


@signature("diffusion")
@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_loss_is_l_simple_on_the_forward_process(prediction: str) -> None:
    """loss = mean ‖target - f(√ᾱ x0 + √(1-ᾱ) ε, t)‖² with ε, x0 or v = √ᾱ ε - √(1-ᾱ) x0 as the target (fp64)."""
    model = _model("diffusion", prediction=prediction)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 7, 21, 33, 49])
    a = _alpha_bar_oracle(t)[:, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = {"epsilon": noise, "x0": x0, "v": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]
    with torch.no_grad():
        want = ((model(x_t, t.double()) - target) ** 2).mean()
        got = model.loss({"x": x0, "timestep": t, "noise": noise})
        generic = model(x0 * (1 - t.double() / T_TRAIN)[:, None] + noise * (t.double() / T_TRAIN)[:, None], t.double())
        generic_loss = ((generic - target) ** 2).mean()
        lazy_target = ((model(x_t, t.double()) - x_t) ** 2).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, generic_loss) and not torch.allclose(got, lazy_target)


def test_loss_draws_from_the_generator_and_trains_every_parameter() -> None:
    model = _model("diffusion").train()
    x0 = torch.randn(8, 3, dtype=torch.float64)
    first = model.loss({"x": x0}, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, model.loss({"x": x0}, generator=torch.Generator().manual_seed(1)))
    first.backward()
    assert all(p.grad is not None for p in model.parameters())


@signature("ddim")
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_sample_is_the_loop_of_eq_12(eta: float) -> None:
    """``sample`` starts from the generator's noise and applies eq. 12 at the strided times; η = 0 is deterministic
    given the start, η > 0 draws the step noise from the same generator."""
    model = _model("ddim", eta=eta)
    a = model.alphas_cumprod()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    times = diffusion_timesteps(T_TRAIN, 5)
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else -1
        x = ddim_step(model(x, torch.full((4,), float(t), dtype=torch.float64)), x, t, t_prev, a, eta=eta, generator=g)
    got = model.sample(4, steps=5, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


@signature("diffusion")
def test_ddpm_sample_is_algorithm_2() -> None:
    model = _model("diffusion", num_classes=2)
    a, labels = model.alphas_cumprod(), torch.tensor([0, 1, 1])
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, generator=g, dtype=torch.float64)
    times = diffusion_timesteps(T_TRAIN, T_TRAIN)
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else -1
        out = model(x, torch.full((3,), float(t), dtype=torch.float64), labels)
        x = ddpm_step(out, x, t, t_prev, a, generator=g)
    got = model.sample(3, generator=torch.Generator().manual_seed(2), class_labels=labels, steps=T_TRAIN)
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_images_through_the_unet_block() -> None:
    pytest.importorskip("edifice_vision")
    model = edifice.build(
        "diffusion",
        denoiser="unet",
        channels=1,
        hidden_size=8,
        channel_mults=(1, 2),
        layers_per_block=1,
        norm_groups=4,
        image_size=8,
        num_train_timesteps=10,
    )
    out = model.sample(2, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    assert model.loss({"x": torch.randn(2, 1, 8, 8)}).ndim == 0


def test_bad_configs_and_calls_are_refused() -> None:
    with pytest.raises(ConfigError, match="beta_schedule"):
        edifice.config("diffusion", beta_schedule="quadratic")
    with pytest.raises(ConfigError, match="prediction"):
        edifice.config("ddim", prediction="score")
    with pytest.raises(ConfigError, match="eta"):
        edifice.config("ddim", eta=-0.1)
    model = _model("diffusion", num_classes=2)
    with pytest.raises(ValueError, match="class_labels"):
        model.sample(2, steps=2)
    with pytest.raises(ValueError, match=r"batch\['x'\]"):
        model.loss({"input": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="steps"):
        model.sample(2, steps=T_TRAIN + 1, class_labels=torch.tensor([0, 1]))
