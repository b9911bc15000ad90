"""Activation functions picked by name, so configs can store them as JSON strings.

Names follow the papers and, where they differ, the transformers spellings are accepted as aliases so that converted
configs need no translation (``"gelu_pytorch_tanh"`` and ``"gelu_new"`` are the tanh approximation of GELU).

* GELU: Hendrycks & Gimpel (2016), "Gaussian Error Linear Units", https://arxiv.org/abs/1606.08415; the exact form
  ``x Φ(x)`` and the tanh approximation (their eq. in §2).
* SiLU / Swish: Ramachandran et al. (2017), "Searching for Activation Functions", https://arxiv.org/abs/1710.05941.
* Squared ReLU: So et al. (2021), "Primer: Searching for Efficient Transformers", https://arxiv.org/abs/2109.08668.
* QuickGELU: ``x σ(1.702 x)``, the approximation used by CLIP (Radford et al. 2021).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edifice._text import did_you_mean

__all__ = ["ACTIVATIONS", "QuickGELU", "ReLUSquared", "activation_names", "get_activation"]


class ReLUSquared(nn.Module):
    """Squared ReLU, ``max(x, 0)²`` (Primer, So et al. 2021)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation elementwise."""
        return torch.relu(x).square()


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU, ``x σ(1.702 x)`` (CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation elementwise."""
        return x * torch.sigmoid(1.702 * x)


#: Canonical activation names and the module each builds.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": QuickGELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "relu2": ReLUSquared,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}

# Other spellings of the same functions (papers' and transformers' names).
_ALIASES: dict[str, str] = {
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu_squared": "relu2",
    "squared_relu": "relu2",
    "linear": "identity",
    "none": "identity",
}


def activation_names() -> list[str]:
    """Every accepted activation name (canonical names and aliases), sorted."""
    return sorted(ACTIVATIONS.keys() | _ALIASES.keys())


def get_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` (case-insensitive; e.g. ``"gelu"``, ``"silu"``, ``"relu2"``)."""
    if not isinstance(name, str):
        raise TypeError(f"activation must be given by name (a str), got {type(name).__name__}")
    key = name.lower()
    key = _ALIASES.get(key, key)
    factory = ACTIVATIONS.get(key)
    if factory is None:
        valid = ", ".join(activation_names())
        raise ValueError(f"unknown activation {name!r}; valid names: {valid}.{did_you_mean(name, activation_names())}")
    return factory()
