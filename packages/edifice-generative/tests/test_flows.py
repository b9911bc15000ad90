"""``flow_matching`` and ``rectified_flow``: an fp64 oracle of the CFM loss on the OT path, Euler sampling, reflow.

The oracle writes the path and its velocity out (Lipman et al. eq. 20-23; rectified flow's eq. 1 is σ_min = 0);
a generic path (the variance-preserving cos/sin interpolation) or a generic target (the data alone) gives another
loss and fails. The Euler step's parity with diffusers is in ``test_schedules_samplers.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice.errors import ConfigError
from edifice.testing import signature


def _model(arch: str, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"denoiser": "mlp", "channels": 2, "hidden_size": 16, "n_layers": 1}
    return edifice.build(arch, **{**kw, **overrides}).double().eval()


_CASES = [("flow_matching", 0.0), ("flow_matching", 0.05), ("rectified_flow", 0.0)]


@pytest.mark.parametrize(("arch", "sigma_min"), _CASES)
def test_loss_is_velocity_regression_on_the_straight_path(arch: str, sigma_min: float) -> None:
    """loss = mean ‖v(x_t, t) - (x1 - (1-σ) x0)‖², x_t = (1 - (1-σ) t) x0 + t x1 (fp64, hand-made t and pairs)."""
    model = _model(arch, **({"sigma_min": sigma_min} if arch == "flow_matching" else {}))
    g = torch.Generator().manual_seed(4)
    x1, x0 = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.6, 1.0], dtype=torch.float64)
    tt = t[:, None]
    x_t = (1 - (1 - sigma_min) * tt) * x0 + tt * x1
    u = x1 - (1 - sigma_min) * x0
    with torch.no_grad():
        got = model.loss({"x": x1, "noise": x0, "timestep": t})
        want = ((model(x_t, t) - u) ** 2).mean()
        vp = torch.cos(tt * math.pi / 2) * x0 + torch.sin(tt * math.pi / 2) * x1
        generic_path = ((model(vp, t) - u) ** 2).mean()
        generic_target = ((model(x_t, t) - x1) ** 2).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, generic_path) and not torch.allclose(got, generic_target)


@signature("flow_matching")
def test_flow_matching_cfm_loss_oracle() -> None:
    test_loss_is_velocity_regression_on_the_straight_path("flow_matching", 0.05)


@signature("rectified_flow")
def test_rectified_flow_loss_oracle_and_reflow_pairs_are_the_flows_endpoints() -> None:
    """The loss is eq. 1's; ``reflow_pairs`` returns (Z_0, Z_1) with Z_1 the Euler ODE solution from Z_0, and the
    next flow's loss on them uses that coupling (its noise is Z_0, not fresh noise)."""
    test_loss_is_velocity_regression_on_the_straight_path("rectified_flow", 0.0)
    model = _model("rectified_flow")
    pairs = model.reflow_pairs(6, steps=3, generator=torch.Generator().manual_seed(9))
    z = pairs["noise"].clone()
    for i in range(3):
        t = torch.full((6,), i / 3, dtype=torch.float64)
        z = z + model(z, t) / 3
    torch.testing.assert_close(pairs["x"], z, rtol=1e-12, atol=1e-12)
    t = torch.full((6,), 0.5, dtype=torch.float64)
    paired = model.loss({**pairs, "timestep": t})
    fresh = model.loss({"x": pairs["x"], "timestep": t}, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(paired, fresh)


def test_sample_starts_from_the_generator_and_takes_labels() -> None:
    model = _model("flow_matching", num_classes=3)
    labels = torch.tensor([0, 2])
    a = model.sample(2, steps=3, generator=torch.Generator().manual_seed(1), class_labels=labels)
    b = model.sample(2, steps=3, generator=torch.Generator().manual_seed(1), class_labels=labels)
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 2)
    with pytest.raises(ValueError, match="class_labels"):
        model.sample(2, steps=3)


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="sigma_min"):
        edifice.config("flow_matching", sigma_min=1.0)
    with pytest.raises(ConfigError, match="denoiser"):
        edifice.config("rectified_flow", denoiser="transformer")
    with pytest.raises(ConfigError, match="norm_groups"):
        edifice.config("rectified_flow", denoiser="unet", hidden_size=12, norm_groups=8)
