"""``nerf``: Neural Radiance Fields (Mildenhall, Srinivasan, Tancik, Barron, Ramamoorthi & Ng, ECCV 2020).

"NeRF: Representing Scenes as Neural Radiance Fields for View Synthesis", https://arxiv.org/abs/2003.08934.

- Eq. 4, positional encoding: ``γ(p) = (sin(2^0 π p), cos(2^0 π p), ..., sin(2^(L-1) π p), cos(2^(L-1) π p))``
  per coordinate, ``L = 10`` for x and 4 for d; like the authors' code we also prepend ``p`` itself
  (``include_input``).
- Fig. 7, the network ``F_Θ``: 8 ReLU layers of 256 on ``γ(x)``, ``γ(x)`` concatenated to the 5th layer's output
  (the skip), a linear σ head (ReLU'd, as the authors' ``raw2outputs`` does), a 256-wide feature concatenated with
  ``γ(d)``, one 128-wide ReLU layer and a sigmoid RGB head. ``use_viewdir=False`` is the paper's "no view dependence"
  ablation (RGB from the trunk).
- Eqs. 1-3, volume rendering along ``r(t) = o + t d``: ``Ĉ(r) = Σ_i T_i (1 - exp(-σ_i δ_i)) c_i`` with
  ``T_i = exp(-Σ_{j<i} σ_j δ_j)`` and ``δ_i = t_{i+1} - t_i`` (times ``|d|``, so t is in units of the ray).
- Eq. 2, stratified sampling: ``t_i ~ U[t_n + (i-1)/N (t_f - t_n), t_n + i/N (t_f - t_n)]``; the bin midpoints
  without ``perturb``.
- §5.2 / eq. 5, hierarchical sampling: the coarse weights ``w_i = T_i α_i``, normalised, are a piecewise-constant
  PDF over the bins; ``N_f`` samples by inverse transform sampling, and the fine network renders all ``N_c + N_f``
  sorted samples. The loss of eq. 6 is :meth:`NeRF.loss`.

Deviations: the last interval is ``δ_N = t_f - t_N`` (the paper leaves it open; the authors' code uses 1e10, an
opaque wall behind the far plane), so ``1 - Σ w_i = T(t_f)`` is the transmittance through the whole segment and a
background colour is composited explicitly (``background``). ``density_activation='softplus'`` (Barron et al. 2021,
mip-NeRF) is offered beside the paper's ReLU, whose single σ unit can start dead. Initialisation: PyTorch's
``nn.Linear`` default (the authors' TF code uses Glorot uniform). No density noise regulariser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice.model import Model
from edifice.outputs import model_output
from edifice_vision.configs.nerf import NeRFConfig

__all__ = [
    "NeRF",
    "NeRFOutput",
    "RadianceField",
    "RenderOutput",
    "positional_encoding",
    "sample_pdf",
    "stratified_samples",
    "volume_render",
]

#: A radiance field: points ``[..., 3]`` and unit directions ``[..., 3]`` -> (rgb ``[..., 3]``, σ ``[...]``).
Field = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def positional_encoding(p: Tensor, num_frequencies: int, *, include_input: bool = True) -> Tensor:
    """Eq. 4: ``[p?, sin(2^0 π p), cos(2^0 π p), ..., sin(2^(L-1) π p), cos(2^(L-1) π p)]`` -> ``[..., D(2L+[1])]``."""
    freqs = (2.0 ** torch.arange(num_frequencies, device=p.device, dtype=p.dtype)) * math.pi  # (L,)
    angles = p.unsqueeze(-2) * freqs.unsqueeze(-1)  # (..., L, D)
    enc = torch.stack([angles.sin(), angles.cos()], dim=-2).flatten(-3)  # (..., L*2*D): per frequency sin then cos
    return torch.cat([p, enc], dim=-1) if include_input else enc


def encoded_size(dim: int, num_frequencies: int, include_input: bool) -> int:
    """Width of :func:`positional_encoding` of a ``dim``-vector."""
    return dim * (2 * num_frequencies + int(include_input))


def stratified_samples(
    near: Tensor, far: Tensor, n: int, *, perturb: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Eq. 2: one sample per bin of ``[near, far]`` split into ``n`` equal bins -> ``t [R, n]`` (midpoints unless
    ``perturb``). ``near``/``far`` are ``[R]``."""
    u = torch.linspace(0.0, 1.0, n + 1, device=near.device, dtype=near.dtype)
    edges = near[:, None] + (far - near)[:, None] * u  # (R, n + 1)
    lower, upper = edges[:, :-1], edges[:, 1:]
    if perturb:
        device = lower.device if generator is None else generator.device
        frac = torch.rand(lower.shape, generator=generator, dtype=lower.dtype, device=device).to(lower.device)
    else:
        frac = torch.full_like(lower, 0.5)
    return lower + (upper - lower) * frac


def volume_render(
    sigma: Tensor, rgb: Tensor, t: Tensor, far: Tensor, ray_norm: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Eq. 3 on samples ``t [R, S]`` (sorted) with densities ``σ [R, S]`` and colours ``[R, S, 3]``.

    ``δ_i = t_{i+1} - t_i`` with ``t_{S+1} = far [R]``, scaled by the ray direction's norm ``[R]`` when given.
    Returns ``(rgb [R, 3], depth [R], acc [R], weights [R, S])``: ``Σ w_i c_i``, ``Σ w_i t_i``, ``Σ w_i`` and
    ``w_i = T_i α_i``. The transmittance through the whole segment is ``1 - acc``.
    """
    delta = torch.diff(torch.cat([t, far[:, None]], dim=-1), dim=-1)  # (R, S)
    if ray_norm is not None:
        delta = delta * ray_norm[:, None]
    tau = sigma * delta  # optical thickness of each interval
    # T_i = exp(-Σ_{j<i} σ_j δ_j): an exclusive cumulative sum (in fp32 at least, DESIGN §4 numerics).
    acc_dtype = torch.promote_types(tau.dtype, torch.float32)
    optical = torch.cumsum(tau.to(acc_dtype), dim=-1) - tau.to(acc_dtype)
    trans = torch.exp(-optical)
    alpha = 1.0 - torch.exp(-tau.to(acc_dtype))
    weights = (trans * alpha).to(sigma.dtype)  # (R, S)
    color = (weights.unsqueeze(-1) * rgb).sum(dim=-2)
    depth = (weights * t).sum(dim=-1)
    return color, depth, weights.sum(dim=-1), weights


def sample_pdf(
    edges: Tensor, weights: Tensor, n: int, *, perturb: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """§5.2: ``n`` samples ``[R, n]`` from the piecewise-constant PDF ``weights [R, S]`` over bins ``edges [R, S+1]``.

    Inverse transform sampling: ``u`` uniform (evenly spaced ``(k + 0.5)/n`` unless ``perturb``), the bin whose CDF
    interval holds ``u``, and the linear position inside it. Weights get ``1e-5`` added (the authors' code) so an
    empty ray samples uniformly. No gradient flows into the samples (as in the authors' code).
    """
    edges, weights = edges.detach(), weights.detach()
    w = weights + 1e-5
    pdf = w / w.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # (R, S + 1)
    cdf[:, -1] = 1.0
    R = weights.shape[0]
    if perturb:
        device = cdf.device if generator is None else generator.device
        u = torch.rand(R, n, generator=generator, dtype=cdf.dtype, device=device).to(cdf.device)
    else:
        u = ((torch.arange(n, device=cdf.device, dtype=cdf.dtype) + 0.5) / n).expand(R, n)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)  # upper edge index of the bin
    c0, c1 = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
    e0, e1 = edges.gather(-1, idx - 1), edges.gather(-1, idx)
    frac = (u - c0) / (c1 - c0).clamp_min(1e-12)
    return e0 + frac * (e1 - e0)


@model_output
class NeRFOutput:
    """The radiance field at the given points: colour and density from the coarse (and fine) network."""

    rgb: Tensor
    """``[B, 3]`` colour in [0, 1] (coarse network)."""
    sigma: Tensor
    """``[B]`` density >= 0 (coarse network)."""
    rgb_fine: Tensor | None = None
    """``[B, 3]`` colour from the fine network (``fine_network``)."""
    sigma_fine: Tensor | None = None
    """``[B]`` density from the fine network."""


@model_output
class RenderOutput:
    """Rendered rays: colour, expected depth, opacity, and the samples and weights behind them."""

    rgb: Tensor
    """``[R, 3]`` rendered colour (fine network when there is one)."""
    depth: Tensor
    """``[R]`` expected termination distance ``Σ w_i t_i``."""
    acc: Tensor
    """``[R]`` opacity ``Σ w_i = 1 - T(t_f)``."""
    weights: Tensor
    """``[R, S]`` the weights ``T_i α_i`` of the final samples."""
    t: Tensor
    """``[R, S]`` the final sample distances."""
    rgb_coarse: Tensor | None = None
    """``[R, 3]`` the coarse network's rendering (when hierarchical sampling ran)."""


class RadianceField(nn.Module):
    """Fig. 7: ``(γ(x), γ(d)) -> (rgb, σ)`` with the skip connection and the view-direction branch."""

    def __init__(self, config: NeRFConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        d_x = encoded_size(c.coord_dim, c.num_frequencies, c.include_input)
        d_d = encoded_size(c.dir_dim, c.dir_frequencies, c.include_input)
        widths_in = [d_x] + [c.d_model + (d_x if i == c.skip_layer else 0) for i in range(c.n_layers - 1)]
        self.trunk = nn.ModuleList(nn.Linear(w, c.d_model) for w in widths_in)
        self.sigma_head = nn.Linear(c.d_model, 1)
        if c.use_viewdir:
            self.feature = nn.Linear(c.d_model, c.d_model)
            self.view = nn.Linear(c.d_model + d_d, c.d_model // 2)
            self.rgb_head = nn.Linear(c.d_model // 2, 3)
        else:
            self.rgb_head = nn.Linear(c.d_model, 3)

    def forward(self, x: Tensor, d: Tensor | None) -> tuple[Tensor, Tensor]:
        """Points ``x [..., coord_dim]``, unit directions ``d [..., dir_dim]`` -> (rgb ``[..., 3]``, σ ``[...]``)."""
        c = self.config
        gx = positional_encoding(x, c.num_frequencies, include_input=c.include_input)
        h = gx
        for i, layer in enumerate(self.trunk):
            h = F.relu(layer(h))
            if i == c.skip_layer:
                h = torch.cat([gx, h], dim=-1)  # the skip: γ(x) joins the (skip_layer + 1)-th layer's output
        raw = self.sigma_head(h).squeeze(-1)
        sigma = F.relu(raw) if c.density_activation == "relu" else F.softplus(raw)
        if c.use_viewdir:
            assert d is not None
            gd = positional_encoding(d, c.dir_frequencies, include_input=c.include_input)
            h = F.relu(self.view(torch.cat([self.feature(h), gd], dim=-1)))
        return torch.sigmoid(self.rgb_head(h)), sigma


class NeRF(Model):
    """Neural radiance field: ``forward`` queries the network(s) at points; :meth:`render_rays` renders rays."""

    config_class: ClassVar[type[ArchConfig]] = NeRFConfig
    config: NeRFConfig

    def __init__(self, config: NeRFConfig) -> None:
        super().__init__(config)
        self.coarse = RadianceField(config)
        self.fine = RadianceField(config) if config.fine_network else None

    def forward(self, coordinates: Tensor, directions: Tensor | None = None) -> NeRFOutput:
        """``coordinates [B, coord_dim]`` and ``directions [B, dir_dim]`` (normalised here) -> colour and density."""
        self.check_inputs(coordinates=coordinates, directions=directions)
        d = None if directions is None else F.normalize(directions, dim=-1)
        rgb, sigma = self.coarse(coordinates, d)
        if self.fine is None:
            return NeRFOutput(rgb, sigma)
        rgb_f, sigma_f = self.fine(coordinates, d)
        return NeRFOutput(rgb, sigma, rgb_f, sigma_f)

    def render_rays(
        self,
        origins: Tensor,
        directions: Tensor,
        *,
        near: float | Tensor,
        far: float | Tensor,
        perturb: bool = False,
        generator: torch.Generator | None = None,
        background: float | Tensor = 0.0,
        field: Field | None = None,
        fine_field: Field | None = None,
    ) -> RenderOutput:
        """Render rays ``r(t) = o + t d`` (``origins``, ``directions`` ``[R, 3]``) between ``near`` and ``far``.

        ``N_c = n_samples`` stratified samples through the coarse network, then (with a fine network and
        ``n_importance > 0``) ``N_f`` samples from the coarse weights and all ``N_c + N_f`` through the fine network.
        ``field``/``fine_field`` replace the networks (e.g. an analytic density field). ``background`` is composited
        behind: ``rgb + (1 - acc) * background``.
        """
        c = self.config
        R = origins.shape[0]
        near_t = torch.as_tensor(near, dtype=origins.dtype, device=origins.device).expand(R)
        far_t = torch.as_tensor(far, dtype=origins.dtype, device=origins.device).expand(R)
        norm = directions.norm(dim=-1)
        unit = directions / norm.clamp_min(1e-12)[:, None]
        coarse: Field = field if field is not None else self.coarse
        t = stratified_samples(near_t, far_t, c.n_samples, perturb=perturb, generator=generator)

        def shade(net: Field, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            points = origins[:, None] + t[..., None] * directions[:, None]  # (R, S, 3)
            rgb, sigma = net(points, unit[:, None].expand_as(points))
            return volume_render(sigma, rgb, t, far_t, norm)

        rgb, depth, acc, weights = shade(coarse, t)
        rgb_coarse = None
        fine: Field | None = fine_field if fine_field is not None else self.fine
        if fine is not None and c.n_importance > 0:
            edges = torch.cat([near_t[:, None], (t[:, 1:] + t[:, :-1]) / 2, far_t[:, None]], dim=-1)
            t_fine = sample_pdf(edges, weights, c.n_importance, perturb=perturb, generator=generator)
            t, _ = torch.sort(torch.cat([t, t_fine], dim=-1), dim=-1)
            rgb_coarse = rgb + (1.0 - acc)[:, None] * background
            rgb, depth, acc, weights = shade(fine, t)
        return RenderOutput(rgb + (1.0 - acc)[:, None] * background, depth, acc, weights, t, rgb_coarse)

    def loss(self, origins: Tensor, directions: Tensor, target: Tensor, **render: object) -> Tensor:
        """Eq. 6: squared error of the coarse and the fine renderings against the target colours ``[R, 3]``."""
        out = self.render_rays(origins, directions, **render)  # type: ignore[arg-type]
        total = ((out.rgb - target) ** 2).sum(-1).mean()
        if out.rgb_coarse is not None:
            total = total + ((out.rgb_coarse - target) ** 2).sum(-1).mean()
        return total
