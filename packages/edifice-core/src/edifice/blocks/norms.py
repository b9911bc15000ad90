"""Normalisation layers picked by name: RMSNorm (plain and Gemma's zero-centred form) and LayerNorm (bias optional).

* RMSNorm: Zhang & Sennrich (2019), "Root Mean Square Layer Normalization", https://arxiv.org/abs/1910.07467, eq. (4):
  ``y = x / RMS(x) * g`` with ``RMS(x) = sqrt(mean(x²) + eps)``. The zero-centred variant stores ``w`` with
  ``g = 1 + w`` (Gemma), so weight decay pulls the gain towards one rather than zero.
* LayerNorm: Ba et al. (2016), "Layer Normalization", https://arxiv.org/abs/1607.06450, eq. (4); ``bias=False`` drops
  the additive term as in PaLM and OLMo.

Both normalise in fp32 and cast back to the input dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice import ops
from edifice._text import did_you_mean

__all__ = ["LayerNorm", "RMSNorm", "get_norm", "norm_names"]


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, with an optional (zero-centred) learned gain."""

    def __init__(
        self, dim: int, eps: float = 1e-6, *, elementwise_affine: bool = True, zero_centered: bool = False
    ) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"RMSNorm: dim must be > 0, got {dim}")
        if zero_centered and not elementwise_affine:
            raise ValueError("RMSNorm: zero_centered=True stores the gain as 1 + w and needs elementwise_affine=True")
        self.dim = dim
        self.eps = eps
        self.zero_centered = zero_centered
        self.weight = nn.Parameter(torch.empty(dim)) if elementwise_affine else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit gain: ``weight = 1`` (or ``w = 0`` in the zero-centred form, which is the same gain)."""
        if self.weight is not None:
            nn.init.zeros_(self.weight) if self.zero_centered else nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x [..., dim]``; returns the same shape and dtype."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm: expected input [..., {self.dim}], got {list(x.shape)}")
        weight: torch.Tensor | None = self.weight
        if weight is not None and self.zero_centered:
            # 1 + w in fp32: in bf16 a small w would be rounded away next to 1.
            weight = weight.float() + 1.0
        return ops.rms_norm(x, weight, self.eps)

    def extra_repr(self) -> str:
        affine = self.weight is not None
        return f"{self.dim}, eps={self.eps}, elementwise_affine={affine}, zero_centered={self.zero_centered}"


class LayerNorm(nn.LayerNorm):
    """Layer normalisation over the last dimension, computed in fp32, with the additive bias optional."""

    def __init__(self, dim: int, eps: float = 1e-5, *, elementwise_affine: bool = True, bias: bool = True) -> None:
        if dim <= 0:
            raise ValueError(f"LayerNorm: dim must be > 0, got {dim}")
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x [..., dim]``; returns the same shape and dtype."""
        if x.shape[-1] != self.normalized_shape[0]:
            raise ValueError(f"LayerNorm: expected input [..., {self.normalized_shape[0]}], got {list(x.shape)}")
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def _identity(dim: int, **_: Any) -> nn.Module:
    return nn.Identity()


# name -> (class or factory, fixed keyword arguments)
_NORMS: dict[str, tuple[Any, dict[str, Any]]] = {
    "rmsnorm": (RMSNorm, {}),
    "rmsnorm_zero_centered": (RMSNorm, {"zero_centered": True}),
    "layernorm": (LayerNorm, {}),
    "layernorm_nobias": (LayerNorm, {"bias": False}),
    "identity": (_identity, {}),
}
_ALIASES = {
    "rms_norm": "rmsnorm",
    "layer_norm": "layernorm",
    "gemma_rmsnorm": "rmsnorm_zero_centered",
    "none": "identity",
}


def norm_names() -> list[str]:
    """Every accepted norm name (canonical names and aliases), sorted."""
    return sorted(_NORMS.keys() | _ALIASES.keys())


def get_norm(name: str, dim: int, **kwargs: Any) -> nn.Module:
    """Build the norm called ``name`` over ``dim`` features; ``kwargs`` (``eps``, ...) go to its constructor."""
    if not isinstance(name, str):
        raise TypeError(f"norm must be given by name (a str), got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _NORMS:
        valid = ", ".join(norm_names())
        raise ValueError(f"unknown norm {name!r}; valid names: {valid}.{did_you_mean(name, norm_names())}")
    factory, fixed = _NORMS[key]
    clash = fixed.keys() & kwargs.keys()
    if clash:
        raise ValueError(f"norm {name!r} fixes {', '.join(sorted(clash))}; use its base name to choose it yourself")
    module: nn.Module = factory(dim, **fixed, **kwargs)
    return module
