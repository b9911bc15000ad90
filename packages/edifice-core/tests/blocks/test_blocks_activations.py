"""Activations by name, each against its defining formula."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from edifice.blocks.activations import activation_names, get_activation


def _phi(x: torch.Tensor) -> torch.Tensor:
    # Standard normal CDF via erf.
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


FORMULAS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": lambda x: x * _phi(x),
    "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "gelu_new": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "quick_gelu": lambda x: x / (1 + torch.exp(-1.702 * x)),
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "swish": lambda x: x / (1 + torch.exp(-x)),
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "relu2": lambda x: torch.where(x > 0, x * x, torch.zeros_like(x)),
    "mish": lambda x: x * torch.tanh(torch.log1p(torch.exp(x))),
    "softplus": lambda x: torch.log1p(torch.exp(x)),
    "sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
    "tanh": lambda x: (torch.exp(2 * x) - 1) / (torch.exp(2 * x) + 1),
    "identity": lambda x: x,
    "elu": lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
    "leaky_relu": lambda x: torch.where(x > 0, x, 0.01 * x),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_activation_matches_formula(name: str) -> None:
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    torch.testing.assert_close(get_activation(name)(x), FORMULAS[name](x), rtol=1e-6, atol=1e-7)


def test_names_are_case_insensitive_and_fresh() -> None:
    assert type(get_activation("SiLU")) is type(get_activation("silu"))
    assert get_activation("gelu") is not get_activation("gelu")
    assert {"gelu", "gelu_tanh", "silu", "swish", "relu", "relu2"} <= set(activation_names())


def test_unknown_activation_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown activation 'gleu'; valid names: .*relu2.*Did you mean 'gelu'"):
        get_activation("gleu")
    with pytest.raises(TypeError, match="by name"):
        get_activation(torch.nn.ReLU)  # type: ignore[arg-type]
