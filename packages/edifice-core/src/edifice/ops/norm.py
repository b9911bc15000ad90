"""Root-mean-square layer normalisation (Zhang & Sennrich, 2019, "Root Mean Square Layer Normalization",
arXiv:1910.07467, eq. 4): ``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dimension.
"""

from __future__ import annotations

import torch

from edifice.ops._checks import expect_floating, fmt_shape
from edifice.ops._registry import Op

__all__ = ["check_rms_norm", "rms_norm", "rms_norm_naive", "rms_norm_reference"]

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
