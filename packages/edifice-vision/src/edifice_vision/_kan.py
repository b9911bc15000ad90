"""The Kolmogorov-Arnold layer: a learnable univariate function on every input-output edge, summed at the outputs.

Liu et al. (2024), "KAN: Kolmogorov-Arnold Networks", https://arxiv.org/abs/2404.19756, §2.2. A layer with ``n_in``
inputs and ``n_out`` outputs computes ``y_j = Σ_i φ_{j,i}(x_i)`` (eq. 2.5), each edge function being

    φ(x) = w_b · silu(x) + w_s · spline(x),   spline(x) = Σ_k c_k B_k(x)                      (2.10-2.12)

where the ``B_k`` are the order-``k`` B-splines on a uniform grid of ``G`` intervals over ``grid_range``, *extended*
by ``k`` knots on each side so that ``G + k`` basis functions cover the range (§2.2 "grid extension" of the knots;
:func:`extended_grid`), evaluated by the Cox-de Boor recursion (:func:`bspline_basis`):

    B_{j,0}(x) = 1[t_j ≤ x < t_{j+1}],
    B_{j,p}(x) = (x - t_j) / (t_{j+p} - t_j) B_{j,p-1}(x) + (t_{j+p+1} - x) / (t_{j+p+1} - t_{j+1}) B_{j+1,p-1}(x).

``basis='rbf'`` replaces the B-splines by Gaussian radial basis functions ``exp(-½ ((x - μ_k) / σ_k)²)`` with learnable
centres and widths per input (FastKAN, Li 2024; the RBFKAN of Vision KAN, Yang et al. 2026, whose released code
initialises ``μ`` on the uniform grid and ``σ`` to its spacing).

Deviations from pykan, the authors' code: the grid is fixed (pykan's ``update_grid_from_samples``, which re-fits the
spline to the activations' range during training, is not provided); a per-output bias (pykan's node bias, Vision
KAN's ``base_linear`` bias) is on by default; ``w_b`` is initialised like ``nn.Linear``, ``w_s`` to 1 and the
coefficients ``c ~ N(0, 0.1²)`` (pykan draws ``c`` by fitting noise; Vision KAN draws ``N(0, 0.1²)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BASES", "KANLayer", "bspline_basis", "extended_grid"]

#: The basis families of the edge functions' learnable part.
BASES = ("bspline", "rbf")


def extended_grid(grid_size: int, order: int, grid_range: tuple[float, float]) -> Tensor:
    """``grid_size + 2 order + 1`` fp64 knots: ``grid_size`` equal steps over ``grid_range``, ``order`` more a side."""
    low, high = grid_range
    h = (high - low) / grid_size
    return low + h * torch.arange(-order, grid_size + order + 1, dtype=torch.float64)


def bspline_basis(x: Tensor, knots: Tensor, order: int) -> Tensor:
    """``[..., len(knots) - order - 1]``: every order-``order`` B-spline on ``knots`` at ``x`` (Cox-de Boor).

    Computed in ``x``'s dtype; the knots are uniform, so no denominator is zero. Outside the extended grid every
    basis function is 0 (only the ``silu`` term of the edge function acts there).
    """
    t = knots.to(x)
    x = x.unsqueeze(-1)
    basis = ((x >= t[:-1]) & (x < t[1:])).to(x.dtype)  # B_{j,0}, j = 0 .. len(t) - 2
    for p in range(1, order + 1):
        left = (x - t[: -(p + 1)]) / (t[p:-1] - t[: -(p + 1)]) * basis[..., :-1]
        right = (t[p + 1 :] - x) / (t[p + 1 :] - t[1:-p]) * basis[..., 1:]
        basis = left + right
    return basis


class KANLayer(nn.Module):
    """``y_j = b_j + Σ_i w_b[j,i] silu(x_i) + w_s[j,i] Σ_k c[j,i,k] B_k(x_i)`` on the last dimension (eq. 2.10-2.12)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        basis: str = "bspline",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if basis not in BASES:
            raise ValueError(f"KANLayer: basis must be one of {', '.join(map(repr, BASES))}, got {basis!r}")
        if grid_size < 1 or spline_order < 0 or not grid_range[0] < grid_range[1]:
            raise ValueError(
                f"KANLayer: need grid_size >= 1, spline_order >= 0 and grid_range low < high, got {grid_size}, "
                f"{spline_order}, {grid_range}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        self.grid_range = (float(grid_range[0]), float(grid_range[1]))
        self.basis = basis
        self.num_basis = grid_size + spline_order if basis == "bspline" else grid_size
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))  # w_b
        self.spline_scale = nn.Parameter(torch.empty(out_features, in_features))  # w_s
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, self.num_basis))  # c
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        if basis == "rbf":
            self.centers = nn.Parameter(torch.empty(in_features, grid_size))  # μ
            self.log_widths = nn.Parameter(torch.empty(in_features, grid_size))  # log σ
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``w_b`` and the bias as ``nn.Linear``; ``w_s = 1``; ``c ~ N(0, 0.1²)``; RBF centres on the grid."""
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        nn.init.ones_(self.spline_scale)
        nn.init.normal_(self.spline_weight, std=0.1)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        if self.basis == "rbf":
            low, high = self.grid_range
            with torch.no_grad():
                grid = torch.linspace(low, high, self.grid_size)
                self.centers.copy_(grid.expand_as(self.centers))
                spacing = (high - low) / max(self.grid_size - 1, 1)
                self.log_widths.fill_(math.log(spacing))

    def basis_functions(self, x: Tensor) -> Tensor:
        """``[..., in_features] -> [..., in_features, num_basis]``: the ``B_k(x_i)`` (or RBFs) of every input."""
        if self.basis == "bspline":
            knots = extended_grid(self.grid_size, self.spline_order, self.grid_range)  # fp64, cast to x's dtype
            return bspline_basis(x, knots, self.spline_order)
        z = (x.unsqueeze(-1) - self.centers) / self.log_widths.exp()
        return torch.exp(-0.5 * z * z)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in_features] -> [..., out_features]``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"KANLayer: expected {self.in_features} input features, got {x.shape[-1]}")
        base = F.linear(F.silu(x), self.base_weight, self.bias)
        coefficients = self.spline_weight * self.spline_scale.unsqueeze(-1)  # w_s c: [out, in, K]
        spline = self.basis_functions(x).flatten(-2) @ coefficients.flatten(1).t()
        out: Tensor = base + spline
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, basis={self.basis!r}, grid_size={self.grid_size}, "
            f"spline_order={self.spline_order}, grid_range={self.grid_range}"
        )
