"""Each training recipe learns a 2-D toy distribution (eight Gaussians) within a fixed CPU step budget.

The samples' squared MMD to fresh data (Gaussian kernel, bandwidth 0.5) must fall below :data:`MMD_BAR` and to a
quarter of the untrained model's (about 0.09-0.14); for scale, a 600-step run scores about 0.01. Rectified flow is
then reflowed once, and its 1-step Euler samples must improve. One intra-op thread: the MLP is too small to share.
"""

from __future__ import annotations

import math

import pytest
import torch

import edifice

pytestmark = pytest.mark.slow

#: Upper bound on MMD² (Gaussian kernel, bandwidth 0.5) between 512 samples and 512 data points.
MMD_BAR = 0.025
STEPS, BATCH, LR = 600, 256, 2e-3


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def eight_gaussians(n: int, generator: torch.Generator) -> torch.Tensor:
    """Eight Gaussians (std 0.1) on the circle of radius 1.5."""
    k = torch.randint(0, 8, (n,), generator=generator)
    angle = k.float() * (2 * math.pi / 8)
    centres = 1.5 * torch.stack([angle.cos(), angle.sin()], dim=1)
    return centres + 0.1 * torch.randn(n, 2, generator=generator)


def mmd2(a: torch.Tensor, b: torch.Tensor, bandwidth: float = 0.5) -> float:
    """The biased squared maximum mean discrepancy with a Gaussian kernel."""

    def k(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(torch.cdist(x, y) ** 2) / (2 * bandwidth**2))

    return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())


def train(model: torch.nn.Module, steps: int = STEPS, batch_fn=None, seed: int = 0) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        batch = batch_fn(g) if batch_fn else {"x": eight_gaussians(BATCH, g)}
        loss = model.loss(batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _build(arch: str, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return edifice.build(arch, denoiser="mlp", channels=2, hidden_size=64, n_layers=2, **kw)


@pytest.mark.parametrize(
    ("arch", "kw", "steps"),
    [
        ("diffusion", {"num_train_timesteps": 1000}, 100),
        ("ddim", {"num_train_timesteps": 1000}, 50),
        ("flow_matching", {"sigma_min": 1e-3}, 50),
        ("rectified_flow", {}, 50),
    ],
)
def test_recipe_learns_eight_gaussians(arch: str, kw: dict[str, object], steps: int) -> None:
    model = _build(arch, **kw)
    data = eight_gaussians(512, torch.Generator().manual_seed(123))
    before = mmd2(model.sample(512, steps=steps, generator=torch.Generator().manual_seed(7)), data)
    train(model)
    after = mmd2(model.sample(512, steps=steps, generator=torch.Generator().manual_seed(7)), data)
    print(f"{arch}: MMD^2 {before:.4f} -> {after:.4f}")
    assert after < MMD_BAR and after < before / 4, (before, after)


def test_reflow_straightens_rectified_flow() -> None:
    """Liu et al. §2.2: training on the flow's own (Z_0, Z_1) coupling makes 1-step Euler samples better."""
    flow = train(_build("rectified_flow"))
    data = eight_gaussians(512, torch.Generator().manual_seed(123))
    one_step = mmd2(flow.sample(512, steps=1, generator=torch.Generator().manual_seed(7)), data)
    pairs = flow.reflow_pairs(2048, steps=50, generator=torch.Generator().manual_seed(11))

    def coupled(g: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, 2048, (BATCH,), generator=g)
        return {"x": pairs["x"][idx], "noise": pairs["noise"][idx]}

    reflowed = train(_build("rectified_flow"), batch_fn=coupled, seed=1)
    one_step_reflowed = mmd2(reflowed.sample(512, steps=1, generator=torch.Generator().manual_seed(7)), data)
    print(f"rectified_flow 1-step MMD^2: {one_step:.4f} -> reflowed {one_step_reflowed:.4f}")
    assert one_step_reflowed < 0.5 * one_step and one_step_reflowed < 2 * MMD_BAR
