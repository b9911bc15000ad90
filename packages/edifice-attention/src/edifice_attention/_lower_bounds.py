"""HGRN's forget-gate lower bounds, shared by ``hgrn`` and ``hgrn_v2`` (Qin et al. 2023, arXiv:2311.04823, §3.3).

Each layer ``l`` of an ``L``-layer stack bounds its forget gate from below by ``γ^l``, which rises with depth:
``γ = cumsum(softmax(Γ, dim=layers)) - softmax(Γ)_0`` for a learned ``Γ ∈ R^{L×C}`` (zero at init: ``γ^l = l/L``),
so the first layer is unbounded and the last forgets least. The gate becomes ``λ = γ + (1 - γ) σ(z)``, in log space.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["layer_lower_bounds", "lower_bound_inputs", "lower_bounded_log_forget"]


def layer_lower_bounds(gamma: Tensor) -> Tensor:
    """``γ^l = cumsum(softmax(Γ))_l - softmax(Γ)_0`` over the layers of ``Γ [L, C]``, fp32 ``[L, C]``."""
    p = gamma.softmax(0, dtype=torch.float32)
    return p.cumsum(0) - p[0]


def lower_bound_inputs(gamma: Tensor | None, n_layers: int) -> list[dict[str, Any]]:
    """Each layer's ``{"lower_bound": γ^l}`` (nothing for the first layer, whose bound is 0, or when ``Γ`` is None)."""
    if gamma is None:
        return [{} for _ in range(n_layers)]
    bounds = layer_lower_bounds(gamma)
    return [{}] + [{"lower_bound": bounds[i]} for i in range(1, n_layers)]


def lower_bounded_log_forget(logits: Tensor, bound: Tensor | None) -> Tensor:
    """``log λ = log(γ + (1 - γ) σ(z))`` of gate logits ``z [..., C]`` and a bound ``γ [C]`` (None: ``log σ(z)``)."""
    g = F.logsigmoid(logits.float())
    if bound is None:
        return g
    return torch.logaddexp(bound.log(), torch.log1p(-bound) + g)
