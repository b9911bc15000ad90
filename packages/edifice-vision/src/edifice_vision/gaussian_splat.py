"""``gaussian_splat``: the differentiable rasterizer of 3D Gaussian Splatting (Kerbl, Kopanas, Leimkühler & Drettakis,
SIGGRAPH 2023), in PyTorch.

"3D Gaussian Splatting for Real-Time Radiance Field Rendering", https://arxiv.org/abs/2308.04079. The scene is a set
of 3-D Gaussians, each with a mean ``μ``, a scale ``s`` (stored as log), a rotation quaternion ``q``, an opacity
(stored as a logit) and spherical-harmonic colour coefficients; a camera is a world-to-camera ``view_matrix``
``W = [R | t]`` and a pinhole with focal ``f = image_size / (2 tan(fov / 2))``.

- Eq. 6: ``Σ = R(q) S S^T R(q)^T`` with ``S = diag(exp(s))``, ``q`` normalised.
- Eq. 5 (EWA splatting, Zwicker et al. 2001): ``Σ' = J W Σ W^T J^T`` with ``J`` the Jacobian of the perspective
  projection at the camera-space mean ``(x, y, z)``: ``J = [[f/z, 0, -f x/z²], [0, f/z, -f y/z²]]``. As in the
  authors' rasterizer (``computeCov2D``), ``x/z`` and ``y/z`` are clamped to 1.3 times the frustum in ``J`` and
  ``0.3`` is added to the diagonal of ``Σ'`` (a one-pixel low-pass filter).
- §6 / eqs. 2-3: the Gaussians are sorted by depth and each pixel composites them front to back,
  ``C = Σ_i c_i α_i Π_{j<i} (1 - α_j)`` with ``α_i = min(0.99, o_i exp(-½ d^T Σ'^{-1} d))``, ``d`` the pixel's offset
  from the projected mean; contributions with ``α < 1/255`` are skipped and Gaussians nearer than ``near_plane`` are
  culled, as in the authors' ``forward.cu``. What is left behind the last Gaussian shows the background.
- Colours: real spherical harmonics of degree <= 3 of the viewing direction, ``c = max(0, SH(d) + 0.5)``
  (the authors' ``computeColorFromSH``).

Deviations: the tile-based culling, per-tile radix sort and early termination (``T < 1e-4``) of the CUDA rasterizer
are speed mechanisms; here every pixel composites every Gaussian in one global depth order, vectorised over pixels
(in chunks of ``pixel_chunk``) and Gaussians, with autograd for the backward pass. The 3σ bounding-box cut-off of the
CUDA code is replaced by the ``α < 1/255`` rule alone (they differ only where a Gaussian's tail beyond 3σ exceeds
1/255, i.e. opacities near 1). The camera centre for degree-1 colours is ``-R^T t`` (exact for rigid transforms).

Initialisation (§5.1, random initialisation of the synthetic scenes): means uniform in a cube, isotropic scales equal to
the mean distance to the three nearest Gaussians, identity rotations, opacity 0.1, random base colours.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice.model import Model
from edifice.outputs import model_output
from edifice_vision.configs.gaussian_splat import GaussianSplatConfig

__all__ = ["GaussianSplat", "SplatOutput", "project", "quaternion_to_matrix", "rasterize", "sh_basis"]

#: Normalisation constants of the real spherical harmonics of degrees 0-3 (the authors' ``SH_C0`` .. ``SH_C3``).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)  # fmt: skip
#: The authors' rasterizer: maximum opacity, the skip threshold, the low-pass dilation and the frustum clamp.
ALPHA_MAX, ALPHA_MIN, DILATION, FRUSTUM_CLAMP = 0.99, 1.0 / 255.0, 0.3, 1.3


@model_output
class SplatOutput:
    """A rendered view: colours and accumulated opacity."""

    image: Tensor
    """``[B, 3, H, W]`` composited colours (background included)."""
    alpha: Tensor
    """``[B, H, W]`` accumulated opacity ``1 - Π (1 - α_i)``."""


def sh_basis(d: Tensor, degree: int) -> Tensor:
    """Real spherical harmonics ``Y_k(d)`` ``[..., (degree+1)²]`` of unit directions ``d [..., 3]``, degrees 0-3.

    The order and signs of the authors' ``computeColorFromSH`` (orthonormal on the sphere; a test integrates them).
    """
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` of quaternions ``q [..., 4]`` (w, x, y, z; normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def project(
    means: Tensor, cov3d: Tensor, view: Tensor, focal: float, center: float, tan_half_fov: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Eqs. 5-6: camera-space means and EWA 2-D covariances.

    ``means [N, 3]``, ``cov3d [N, 3, 3]``, ``view [B, 4, 4]`` -> (pixel means ``[B, N, 2]``, ``Σ' [B, N, 2, 2]``
    with the dilation, depths ``[B, N]``). Pixel ``(u, v)`` has its centre at integer coordinates.
    """
    Rw, tw = view[:, :3, :3], view[:, :3, 3]  # (B, 3, 3), (B, 3)
    p = torch.einsum("bij,nj->bni", Rw, means) + tw[:, None]  # (B, N, 3) camera space
    x, y, z = p.unbind(-1)
    z_safe = torch.where(z.abs() > 1e-6, z, torch.ones_like(z))  # culled later; keeps divisions finite
    mean2d = torch.stack([focal * x / z_safe + center, focal * y / z_safe + center], dim=-1)
    limit = FRUSTUM_CLAMP * tan_half_fov
    tx = (x / z_safe).clamp(-limit, limit) * z_safe
    ty = (y / z_safe).clamp(-limit, limit) * z_safe
    zero = torch.zeros_like(z)
    J = torch.stack(
        [focal / z_safe, zero, -focal * tx / z_safe**2, zero, focal / z_safe, -focal * ty / z_safe**2], dim=-1
    ).reshape(*z.shape, 2, 3)  # (B, N, 2, 3)
    T = J @ Rw[:, None]  # (B, N, 2, 3): J W
    cov2d = T @ cov3d[None] @ T.transpose(-1, -2)  # (B, N, 2, 2)
    cov2d = cov2d + DILATION * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    return mean2d, cov2d, z


def rasterize(
    mean2d: Tensor,
    cov2d: Tensor,
    depth: Tensor,
    opacity: Tensor,
    color: Tensor,
    height: int,
    width: int,
    *,
    near_plane: float,
    background: float | Tensor = 0.0,
    pixel_chunk: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Eqs. 2-3: depth-sorted front-to-back alpha compositing of 2-D Gaussians at every pixel.

    ``mean2d [B, N, 2]``, ``cov2d [B, N, 2, 2]``, ``depth [B, N]``, ``opacity [N]`` in (0, 1), ``color [B, N, 3]`` ->
    (image ``[B, 3, H, W]``, alpha ``[B, H, W]``). Vectorised over pixels (chunks of ``pixel_chunk``) and Gaussians.
    """
    B, N = depth.shape
    order = torch.argsort(depth.detach(), dim=-1)  # front to back (§6: sort by view-space depth)
    take = order[..., None]
    mean2d = mean2d.gather(1, take.expand(B, N, 2))
    cov = cov2d.gather(1, take[..., None].expand(B, N, 2, 2))
    a, b, c = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]
    det = a * c - b * b  # > 0: Σ' is a covariance plus 0.3 I
    conic_a, conic_b, conic_c = c / det, -b / det, a / det  # Σ'^{-1} = [[c, -b], [-b, a]] / det (the "conic")
    valid = depth.gather(1, order) > near_plane  # (B, N): culled behind the near plane
    opac = opacity[order]  # (B, N)
    color = color.gather(1, take.expand(B, N, 3))
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=mean2d.dtype, device=mean2d.device),
        torch.arange(width, dtype=mean2d.dtype, device=mean2d.device),
        indexing="ij",
    )
    pixels = torch.stack([xs, ys], dim=-1).reshape(-1, 2)  # (P, 2): (u, v)
    images, alphas = [], []
    for start in range(0, pixels.shape[0], pixel_chunk):  # chunks of pixels, not a loop over pixels
        d = pixels[None, start : start + pixel_chunk, None] - mean2d[:, None]  # (B, P, N, 2)
        dx, dy = d[..., 0], d[..., 1]
        # -½ d^T Σ'^{-1} d (the authors' "power")
        power = -0.5 * (conic_a[:, None] * dx * dx + conic_c[:, None] * dy * dy) - conic_b[:, None] * dx * dy
        alpha = (opac[:, None] * torch.exp(power)).clamp(max=ALPHA_MAX)
        keep = valid[:, None] & (power <= 0) & (alpha >= ALPHA_MIN)
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))  # (B, P, N)
        # T_i = Π_{j<i} (1 - α_j): an exclusive cumulative product over the depth order.
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], dim=-1), dim=-1)
        w = alpha * trans
        images.append(torch.einsum("bpn,bnc->bpc", w, color))
        alphas.append(w.sum(-1))
    acc = torch.cat(alphas, dim=1)  # (B, P)
    image = torch.cat(images, dim=1) + (1 - acc)[..., None] * background
    return image.transpose(1, 2).reshape(B, 3, height, width), acc.reshape(B, height, width)


class GaussianSplat(Model):
    """A scene of 3-D Gaussians rendered differentiably for any camera: ``view_matrix [B, 4, 4] -> image``."""

    config_class: ClassVar[type[ArchConfig]] = GaussianSplatConfig
    config: GaussianSplatConfig

    def __init__(self, config: GaussianSplatConfig) -> None:
        super().__init__(config)
        n, k = config.num_gaussians, (config.sh_degree + 1) ** 2
        self.means = nn.Parameter(torch.empty(n, 3))
        self.scales = nn.Parameter(torch.empty(n, 3))  # log scales
        self.rotations = nn.Parameter(torch.empty(n, 4))  # quaternions (w, x, y, z)
        self.opacities = nn.Parameter(torch.empty(n))  # logits
        self.colors = nn.Parameter(torch.empty(n, k, 3))  # SH coefficients; [:, 0] the base colour
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """§5.1: uniform means, scale = mean distance to the 3 nearest, q = 1, opacity 0.1, random colour."""
        e = self.config.init_extent
        self.means.uniform_(-e, e)
        n = self.means.shape[0]
        if n > 1:
            k = min(3, n - 1)
            dist = [
                torch.cdist(chunk, self.means).topk(k + 1, largest=False).values[:, 1:].mean(-1)
                for chunk in torch.split(self.means, 4096)
            ]
            scale = torch.cat(dist).clamp_min(1e-7)
        else:
            scale = torch.full((n,), e, dtype=self.means.dtype, device=self.means.device)
        self.scales.copy_(scale.log()[:, None].expand(n, 3))
        self.rotations.zero_()
        self.rotations[:, 0] = 1.0
        self.opacities.fill_(math.log(0.1 / 0.9))  # inverse sigmoid of 0.1
        self.colors.zero_()
        self.colors[:, 0].copy_((torch.rand_like(self.colors[:, 0]) - 0.5) / SH_C0)  # base colour U(0, 1)

    def covariances(self) -> Tensor:
        """Eq. 6: ``Σ = R S S^T R^T`` ``[N, 3, 3]`` (in at least fp32)."""
        dtype = torch.promote_types(self.means.dtype, torch.float32)
        M = quaternion_to_matrix(self.rotations.to(dtype)) * self.scales.to(dtype).exp()[:, None, :]  # R S
        return M @ M.transpose(-1, -2)

    def colors_for(self, view: Tensor) -> Tensor:
        """SH colours ``[B, N, 3]`` seen from each camera: ``max(0, Σ_k Y_k(d) sh_k + 0.5)``, d from the camera."""
        B = view.shape[0]
        colors, means = self.colors.to(view.dtype), self.means.to(view.dtype)
        if self.config.sh_degree == 0:
            return (SH_C0 * colors[:, 0].expand(B, -1, -1) + 0.5).clamp_min(0.0)
        R, t = view[:, :3, :3], view[:, :3, 3]
        campos = -torch.einsum("bji,bj->bi", R, t)  # -R^T t
        d = torch.nn.functional.normalize(means[None] - campos[:, None], dim=-1)  # (B, N, 3)
        basis = sh_basis(d, self.config.sh_degree)  # (B, N, K)
        return (torch.einsum("bnk,nkc->bnc", basis, colors) + 0.5).clamp_min(0.0)

    def forward(self, view_matrix: Tensor) -> SplatOutput:
        """Render the scene for cameras ``view_matrix [B, 4, 4]`` (world to camera) -> image and alpha.

        The geometry and the compositing run in at least fp32 (autocast off): the 2x2 inverse and the ``α >= 1/255``
        cut are ill-conditioned in bf16. The outputs come back in the parameters' dtype.
        """
        self.check_inputs(view_matrix=view_matrix)
        c = self.config
        dtype = torch.promote_types(self.means.dtype, torch.float32)
        tan_half = math.tan(math.radians(c.fov) / 2)
        focal = c.image_size / (2 * tan_half)
        with torch.autocast(view_matrix.device.type, enabled=False):
            view = view_matrix.to(dtype)
            means, cov3d = self.means.to(dtype), self.covariances().to(dtype)
            mean2d, cov2d, depth = project(means, cov3d, view, focal, (c.image_size - 1) / 2, tan_half)
            image, alpha = rasterize(
                mean2d,
                cov2d,
                depth,
                torch.sigmoid(self.opacities.to(dtype)),
                self.colors_for(view).to(dtype),
                c.image_size,
                c.image_size,
                near_plane=c.near_plane,
                background=c.background,
                pixel_chunk=c.pixel_chunk,
            )
        return SplatOutput(image.to(self.means.dtype), alpha.to(self.means.dtype))
