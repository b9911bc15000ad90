"""Root-mean-square layer normalisation (Zhang & Sennrich, 2019, "Root Mean Square Layer Normalization",
arXiv:1910.07467, eq. 4): ``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dimension.

``gated_rms_norm`` is Mamba-2's output norm (Dao & Gu 2024, arXiv:2405.21060, §7.3): the gate first, then RMSNorm over
groups of ``group_size`` features, ``y = RMSNorm_g(x * SiLU(z)) * weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edifice.ops._checks import expect_floating, fmt_shape
from edifice.ops._registry import Op

__all__ = [
    "check_gated_rms_norm",
    "check_rms_norm",
    "gated_rms_norm",
    "gated_rms_norm_naive",
    "gated_rms_norm_reference",
    "rms_norm",
    "rms_norm_naive",
    "rms_norm_reference",
]

_OP = "rms_norm"


def check_rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_OP}: x must be a tensor [..., D], got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{_OP}: x must be [..., D] (at least 1-D), got a 0-D tensor")
    expect_floating(_OP, x=x, weight=weight)
    if weight is not None and tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"{_OP}: weight must be [D] = [{x.shape[-1]}], got {fmt_shape(weight.shape)}")
    if not eps >= 0:
        raise ValueError(f"{_OP}: eps must be >= 0, got {eps!r}")


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim of x ``[..., D]`` with an optional gain ``[D]``; fp32 statistics, x's dtype out."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def rms_norm_naive(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Test oracle: eq. 4 one row at a time."""
    rows = x.float().reshape(-1, x.shape[-1])
    D = x.shape[-1]
    out = []
    for row in rows:
        rms = torch.sqrt((row * row).sum() / D + eps)
        y = row / rms
        out.append(y if weight is None else y * weight.float())
    return torch.stack(out).reshape(x.shape).to(x.dtype)


rms_norm = Op("rms_norm", rms_norm_reference, naive=rms_norm_naive, check=check_rms_norm)


def check_gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    name = "gated_rms_norm"
    check_rms_norm(x, weight, eps)
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != tuple(x.shape):
        got = fmt_shape(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{name}: z must have x's shape {fmt_shape(x.shape)}, got {got}")
    expect_floating(name, z=z)
    D = x.shape[-1]
    if group_size is not None and (group_size <= 0 or D % group_size):
        raise ValueError(f"{name}: group_size must be a positive divisor of D = {D}, got {group_size}")


def gated_rms_norm_reference(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
) -> torch.Tensor:
    """``RMSNorm(x * SiLU(z)) * weight`` per group of ``group_size`` (all of D if None); fp32 or wider inside."""
    D = x.shape[-1]
    size = D if group_size is None else group_size
    work = torch.promote_types(x.dtype, torch.float32)
    gated = (x.to(work) * F.silu(z.to(work))).reshape(*x.shape[:-1], D // size, size)  # (..., G, D / G)
    y = (gated * torch.rsqrt(gated.square().mean(-1, keepdim=True) + eps)).flatten(-2)
    if weight is not None:
        y = y * weight.to(work)
    return y.to(x.dtype)


def gated_rms_norm_naive(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
) -> torch.Tensor:
    """Test oracle: the gate, then eq. 4 on each group of each row, one group at a time."""
    D = x.shape[-1]
    size = D if group_size is None else group_size
    work = torch.promote_types(x.dtype, torch.float32)
    rows = (x.to(work) * z.to(work) * torch.sigmoid(z.to(work))).reshape(-1, D)
    out = torch.empty_like(rows)
    for r, row in enumerate(rows):
        for g in range(0, D, size):
            group = row[g : g + size]
            out[r, g : g + size] = group / torch.sqrt((group * group).sum() / size + eps)
    if weight is not None:
        out = out * weight.to(work)
    return out.reshape(x.shape).to(x.dtype)


gated_rms_norm = Op("gated_rms_norm", gated_rms_norm_reference, naive=gated_rms_norm_naive, check=check_gated_rms_norm)
