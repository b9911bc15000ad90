"""``gaussian_splat``: 3D Gaussian Splatting's rasterizer (Kerbl et al. 2023) in PyTorch.

The signature, in fp64: one pixel of a two-Gaussian scene computed by hand — EWA covariance ``J W Σ W^T J^T + 0.3 I``
(eq. 5) from ``Σ = R S S^T R^T`` (eq. 6), the Gaussian falloff, and front-to-back compositing
``c_A α_A + c_B α_B (1 - α_A) + bg (1 - α_A)(1 - α_B)`` (eq. 3) with the far Gaussian listed first, so the depth sort
matters. A renderer that blends in list order, averages, or projects without the Jacobian fails it. Besides:
gradients reach means, scales, rotations, opacities and colours, and (slow) a scene fits a target image.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice_vision.gaussian_splat import SH_C0, sh_basis


def camera(z: float = 0.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """World-to-camera transform of a camera at (0, 0, -z) looking along +z."""
    view = torch.eye(4, dtype=dtype)
    view[2, 3] = z
    return view[None]


def set_scene(model: torch.nn.Module, means, log_scales, quats, opacities, colors) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        f64 = torch.float64
        model.means.copy_(torch.tensor(means, dtype=f64))
        model.scales.copy_(torch.tensor(log_scales, dtype=f64))
        model.rotations.copy_(torch.tensor(quats, dtype=f64))
        model.opacities.copy_(torch.logit(torch.tensor(opacities, dtype=f64)))
        model.colors[:, 0].copy_((torch.tensor(colors, dtype=f64) - 0.5) / SH_C0)


@signature("gaussian_splat")
def test_single_pixel_is_hand_computed_compositing() -> None:
    model = edifice.build(
        "gaussian_splat", dtype=torch.float64, num_gaussians=2, image_size=5, fov=90.0, background=0.25
    )
    sA, sB, oA, oB = 0.3, 0.5, 0.6, 0.7
    cA, cB = [0.9, 0.2, 0.1], [0.1, 0.8, 0.3]
    # Gaussian B (far, off-centre) first in the list, A (near, on the axis) second.
    set_scene(
        model,
        [[0.4, 0.0, 4.0], [0.0, 0.0, 2.0]],
        [[math.log(sB)] * 3, [math.log(sA)] * 3],
        [[1.0, 0.0, 0.0, 0.0]] * 2,
        [oB, oA],
        [cB, cA],
    )
    out = model(camera())
    f, center = 5 / (2 * math.tan(math.pi / 4)), 2.0  # focal = W / (2 tan(fov/2)), principal point (W-1)/2
    # A sits on the optical axis at the pixel (2, 2): d = 0, so α_A = o_A whatever its covariance.
    alpha_A = oA
    # B: projected to u = f x / z + c; Σ' = s² J J^T + 0.3 I with J = [[f/z, 0, -f x/z²], [0, f/z, 0]].
    x, z = 0.4, 4.0
    u = f * x / z + center
    cov_uu = sB**2 * ((f / z) ** 2 + (f * x / z**2) ** 2) + 0.3
    alpha_B = oB * math.exp(-0.5 * (center - u) ** 2 / cov_uu)
    want = [
        a * alpha_A + b * alpha_B * (1 - alpha_A) + 0.25 * (1 - alpha_A) * (1 - alpha_B)
        for a, b in zip(cA, cB, strict=True)
    ]
    torch.testing.assert_close(out.image[0, :, 2, 2], torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        out.alpha[0, 2, 2], torch.tensor(1 - (1 - alpha_A) * (1 - alpha_B), dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_rotation_turns_the_footprint() -> None:
    model = edifice.build("gaussian_splat", dtype=torch.float64, num_gaussians=1, image_size=9, fov=60.0)
    quarter = [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]  # 90° about the optical axis
    set_scene(model, [[0.0, 0.0, 3.0]], [[math.log(0.5), math.log(0.1), math.log(0.2)]], [quarter], [0.9], [[1, 1, 1]])
    turned = model(camera()).alpha[0]
    set_scene(
        model, [[0.0, 0.0, 3.0]], [[math.log(0.1), math.log(0.5), math.log(0.2)]], [[1, 0, 0, 0]], [0.9], [[1, 1, 1]]
    )
    swapped = model(camera()).alpha[0]
    torch.testing.assert_close(turned, swapped, atol=1e-12, rtol=0)
    assert not torch.allclose(turned, turned.T)  # anisotropic


def test_near_plane_culls_and_background_shows() -> None:
    model = edifice.build("gaussian_splat", dtype=torch.float64, num_gaussians=1, image_size=5, background=1.0)
    set_scene(model, [[0.0, 0.0, 0.1]], [[0.0] * 3], [[1, 0, 0, 0]], [0.9], [[0, 0, 0]])
    out = model(camera())
    torch.testing.assert_close(out.image, torch.ones_like(out.image))
    assert out.alpha.abs().max() == 0


def test_gradients_reach_every_gaussian_attribute() -> None:
    torch.manual_seed(0)
    model = edifice.build("gaussian_splat", num_gaussians=8, image_size=8, init_extent=0.5)
    with torch.no_grad():
        model.scales.add_(torch.randn_like(model.scales) * 0.3)  # anisotropic, so rotations matter
        model.rotations.add_(torch.randn_like(model.rotations) * 0.2)
    out = model(camera(3.0, torch.float32))
    (out.image * torch.randn_like(out.image)).sum().backward()
    for name in ("means", "scales", "rotations", "opacities", "colors"):
        grad = getattr(model, name).grad
        assert grad is not None and torch.isfinite(grad).all() and (grad != 0).any(), name


def test_pixel_chunks_do_not_change_the_image() -> None:
    torch.manual_seed(0)
    whole = edifice.build("gaussian_splat", num_gaussians=16, image_size=8, pixel_chunk=4096)
    chunked = edifice.build("gaussian_splat", num_gaussians=16, image_size=8, pixel_chunk=7)
    chunked.load_state_dict(whole.state_dict())
    torch.testing.assert_close(chunked(camera(3.0, torch.float32)).image, whole(camera(3.0, torch.float32)).image)


@pytest.mark.slow
def test_fits_a_target_image() -> None:
    """A random scene of 48 Gaussians fits a 16x16 image rendered from another scene: MSE below 2e-3 in 150 steps."""
    torch.manual_seed(1)
    teacher = edifice.build("gaussian_splat", num_gaussians=12, image_size=16, init_extent=0.8)
    view = camera(3.0, torch.float32)
    with torch.no_grad():
        teacher.opacities.fill_(2.0)
        target = teacher(view).image
    torch.manual_seed(2)
    student = edifice.build("gaussian_splat", num_gaussians=48, image_size=16, init_extent=0.8)
    opt = torch.optim.Adam(student.parameters(), lr=0.02)
    start = time.perf_counter()
    first = None
    for _ in range(150):
        loss = ((student(view).image - target) ** 2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = ((student(view).image - target) ** 2).mean().item()
    print(f"fit: {first:.4f} -> {final:.5f} in {time.perf_counter() - start:.1f} s")
    assert final < 2e-3 and final < 0.1 * first


def test_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="sh_degree"):
        edifice.config("gaussian_splat", sh_degree=4)
    with pytest.raises(ValueError, match="fov"):
        edifice.config("gaussian_splat", fov=180.0)
    model = edifice.build("gaussian_splat", num_gaussians=4, image_size=4)
    with pytest.raises(edifice.InputError, match="view_matrix"):
        model(torch.eye(3)[None])


def test_sh_basis_is_orthonormal() -> None:
    """∫ Y_i Y_j dΩ = δ_ij for the 16 functions of degrees 0-3 (Fibonacci-sphere quadrature, fp64)."""
    n = 20000
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n
    phi = math.pi * (3 - math.sqrt(5)) * k
    r = (1 - z**2).sqrt()
    d = torch.stack([r * phi.cos(), r * phi.sin(), z], -1)
    Y = sh_basis(d, 3)  # (n, 16)
    gram = 4 * math.pi * (Y.T @ Y) / n
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)


@pytest.mark.parametrize("degree", [1, 3])
def test_higher_degree_colours_depend_on_the_view(degree: int) -> None:
    torch.manual_seed(0)
    model = edifice.build("gaussian_splat", num_gaussians=4, image_size=8, sh_degree=degree)
    with torch.no_grad():
        model.colors[:, 1:].normal_()
    a = model.colors_for(camera(3.0, torch.float32))
    shifted = camera(3.0, torch.float32)
    shifted[0, 0, 3] = 1.0
    assert not torch.allclose(a, model.colors_for(shifted))
