"""``nerf``: positional encoding, the radiance MLP and volume rendering (Mildenhall et al. 2020).

The signature, in fp64: rendering an analytic density field (a Gaussian blob of constant colour) through
``render_rays`` reproduces the closed-form transmittance ``T(t) = exp(-∫ σ)`` at every sample's bin edge and through
the whole segment, and the colour is ``c (1 - T(t_f))`` exactly. Any renderer other than eq. 3's alpha compositing
(a mean over samples, a max, a missing exclusive cumulative sum) fails it.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice_vision.nerf import positional_encoding, sample_pdf, volume_render

TINY: dict[str, Any] = {
    "d_model": 16,
    "n_layers": 3,
    "skip_layer": 1,
    "num_frequencies": 4,
    "dir_frequencies": 2,
    "n_samples": 8,
    "n_importance": 8,
}
A, S, CENTER, COLOR = 3.0, 0.4, torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64), (0.2, 0.5, 0.9)


def blob(points: torch.Tensor, _dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """σ(x) = A exp(-|x - c|² / s²), constant colour."""
    sigma = A * torch.exp(-((points - CENTER) ** 2).sum(-1) / S**2)
    rgb = torch.tensor(COLOR, dtype=points.dtype).expand(*points.shape[:-1], 3)
    return rgb, sigma


def optical_depth(o: torch.Tensor, d: torch.Tensor, t0: float, t1: torch.Tensor) -> torch.Tensor:
    """Closed form of ∫_{t0}^{t1} σ(o + t d) dt for the blob and unit d: a Gaussian integral (erf)."""
    t_star = ((CENTER - o) * d).sum(-1, keepdim=True)  # closest approach
    b2 = ((o - CENTER) ** 2).sum(-1, keepdim=True) - t_star**2
    scale = A * torch.exp(-b2 / S**2) * S * math.sqrt(math.pi) / 2
    return scale * (torch.erf((t1 - t_star) / S) - torch.erf((t0 - t_star) / S))


@signature("nerf")
def test_analytic_density_matches_closed_form_transmittance() -> None:
    model = edifice.build(
        "nerf", dtype=torch.float64, **{**TINY, "n_samples": 2048, "fine_network": False, "n_importance": 0}
    )
    g = torch.Generator().manual_seed(0)
    o = torch.tensor([[0.0, 0.0, -2.0], [0.3, -0.1, -2.0], [-1.5, 0.4, 0.2]], dtype=torch.float64)
    d = CENTER - o + 0.2 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    near, far = 0.5, 4.0
    out = model.render_rays(o, d, near=near, far=far, field=blob)
    # Transmittance before each sample (1 - the weights so far) against exp(-∫ σ) up to that sample's bin edge.
    trans = 1.0 - (torch.cumsum(out.weights, -1) - out.weights)
    edges = out.t - (far - near) / 2048 / 2
    want = torch.exp(-optical_depth(o, d, near, edges))
    torch.testing.assert_close(trans, want, atol=1e-6, rtol=0)  # the midpoint rule: O(h²) = 5e-7 at N = 2048
    through = torch.exp(-optical_depth(o, d, near, torch.full((3, 1), far, dtype=torch.float64))).squeeze(-1)
    torch.testing.assert_close(1.0 - out.acc, through, atol=1e-7, rtol=0)
    assert (through < 0.9).all() and (through > 0.05).all()  # the rays really cross the blob
    torch.testing.assert_close(out.rgb, torch.tensor(COLOR, dtype=torch.float64) * out.acc[:, None], atol=1e-12, rtol=0)


def test_ray_parameterisation_scales_with_direction_norm() -> None:
    model = edifice.build(
        "nerf", dtype=torch.float64, **{**TINY, "n_samples": 64, "fine_network": False, "n_importance": 0}
    )
    o = torch.tensor([[0.0, 0.0, -2.0]], dtype=torch.float64)
    d = torch.tensor([[0.05, -0.1, 1.0]], dtype=torch.float64)
    unit = model.render_rays(o, d / d.norm(), near=0.5, far=4.0, field=blob)
    scaled = model.render_rays(o, 2 * d / d.norm(), near=0.25, far=2.0, field=blob)  # the same segment of space
    torch.testing.assert_close(scaled.acc, unit.acc, atol=1e-12, rtol=0)
    torch.testing.assert_close(scaled.rgb, unit.rgb, atol=1e-12, rtol=0)


def test_positional_encoding_is_eq_4() -> None:
    p = torch.tensor([[0.3, -1.7]], dtype=torch.float64)
    got = positional_encoding(p, 3, include_input=False)
    want = []
    for k in range(3):
        want += [torch.sin(2**k * math.pi * p), torch.cos(2**k * math.pi * p)]
    torch.testing.assert_close(got, torch.cat(want, -1), atol=1e-14, rtol=0)
    torch.testing.assert_close(positional_encoding(p, 3)[..., :2], p)


def test_volume_render_weights_telescope() -> None:
    g = torch.Generator().manual_seed(1)
    sigma = torch.rand(4, 9, generator=g, dtype=torch.float64) * 3
    t = torch.sort(torch.rand(4, 9, generator=g, dtype=torch.float64), -1).values
    rgb = torch.rand(4, 9, 3, generator=g, dtype=torch.float64)
    far = torch.full((4,), 1.5, dtype=torch.float64)
    color, depth, acc, w = volume_render(sigma, rgb, t, far)
    delta = torch.diff(torch.cat([t, far[:, None]], -1), dim=-1)
    T = torch.ones(4, dtype=torch.float64)
    naive_c, naive_w = torch.zeros(4, 3, dtype=torch.float64), []
    for i in range(9):  # eq. 3 one sample at a time
        wi = T * (1 - torch.exp(-sigma[:, i] * delta[:, i]))
        naive_w.append(wi)
        naive_c += wi[:, None] * rgb[:, i]
        T = T * torch.exp(-sigma[:, i] * delta[:, i])
    torch.testing.assert_close(w, torch.stack(naive_w, -1), atol=1e-14, rtol=0)
    torch.testing.assert_close(color, naive_c, atol=1e-14, rtol=0)
    torch.testing.assert_close(1 - acc, T, atol=1e-14, rtol=0)
    torch.testing.assert_close(depth, (w * t).sum(-1))


def test_sample_pdf_inverts_the_cdf() -> None:
    edges = torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    weights = torch.tensor([[1.0, 0.0, 3.0]], dtype=torch.float64) - 1e-5 * torch.tensor([[1.0, 0.0, 1.0]])
    weights = weights.clamp_min(0) + torch.tensor([[0.0, -1e-5, 0.0]]).clamp_min(0)
    u = (torch.arange(8, dtype=torch.float64) + 0.5) / 8
    got = sample_pdf(edges, weights, 8)
    pdf = (weights + 1e-5) / (weights + 1e-5).sum()
    cdf = torch.cat([torch.zeros(1, 1, dtype=torch.float64), pdf.cumsum(-1)], -1)[0]
    want = []
    for ui in u:  # the inverse of the piecewise-linear CDF
        k = int(torch.searchsorted(cdf, ui, right=True)) - 1
        want.append(edges[0, k] + (ui - cdf[k]) / (cdf[k + 1] - cdf[k]))
    torch.testing.assert_close(got[0], torch.stack(want), atol=1e-12, rtol=0)
    assert ((got >= 2.0) | (got <= 1.0)).all()  # nothing in the empty middle bin


def test_hierarchical_sampling_concentrates_on_the_surface() -> None:
    torch.manual_seed(0)
    model = edifice.build("nerf", dtype=torch.float64, **{**TINY, "n_samples": 16, "n_importance": 32})

    def wall(points: torch.Tensor, _d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = points[..., 2]
        sigma = torch.where((z > 1.3) & (z < 1.4), 200.0, 0.0).to(points.dtype)
        return torch.ones(*points.shape[:-1], 3, dtype=points.dtype), sigma

    o = torch.zeros(2, 3, dtype=torch.float64)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    out = model.render_rays(o, d, near=0.0, far=4.0, field=wall, fine_field=wall)
    assert out.t.shape == (2, 48)
    in_wall = ((out.t > 1.2) & (out.t < 1.5)).sum(-1)
    assert (in_wall >= 20).all()  # most fine samples land near the surface
    assert (out.depth - 1.3).abs().max() < 0.05
    assert out.rgb_coarse is not None


def test_density_ignores_direction_and_skip_reinjects_input() -> None:
    torch.manual_seed(0)
    model = edifice.build("nerf", **TINY).eval()
    x = torch.randn(5, 3)
    with torch.no_grad():
        a = model(x, torch.randn(5, 3))
        b = model(x, torch.randn(5, 3))
    torch.testing.assert_close(a.sigma, b.sigma)
    assert not torch.allclose(a.rgb, b.rgb)
    d_x = 3 * (2 * 4 + 1)
    assert model.coarse.trunk[2].in_features == 16 + d_x  # layer after skip_layer=1 sees [γ(x), h]
    no_view = edifice.build("nerf", **{**TINY, "use_viewdir": False}).eval()
    with torch.no_grad():
        out = no_view(x)
    assert out.rgb.shape == (5, 3)


def test_loss_trains_both_networks() -> None:
    torch.manual_seed(0)
    model = edifice.build("nerf", **TINY)
    o, d = torch.zeros(4, 3), torch.randn(4, 3)
    loss = model.loss(
        o, d, torch.rand(4, 3), near=0.1, far=2.0, perturb=True, generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert model.coarse.trunk[0].weight.grad is not None and model.fine.trunk[0].weight.grad is not None


def test_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="skip_layer"):
        edifice.config("nerf", n_layers=4, skip_layer=3)
    with pytest.raises(ValueError, match="n_importance"):
        edifice.config("nerf", fine_network=False)
    model = edifice.build("nerf", **TINY)
    with pytest.raises(edifice.InputError, match="coordinates"):
        model(torch.randn(4, 2), torch.randn(4, 3))


@pytest.mark.slow
def test_learns_a_tiny_batch() -> None:
    """DESIGN §8's learning check: 200 Adam steps cut the rendering loss (eq. 6) on a few rays by >= 80%."""
    torch.manual_seed(0)
    model = edifice.build("nerf", **{**TINY, "density_activation": "softplus"})  # a dead ReLU σ could not learn
    o, d, target = torch.zeros(6, 3), torch.randn(6, 3), torch.rand(6, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        loss = model.loss(o, d, target, near=0.1, far=2.0)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0]
