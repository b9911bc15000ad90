"""reset_submodules: a submodule with its own reset_parameters owns its subtree; containers are walked through."""

from __future__ import annotations

import torch
from torch import nn

from edifice.initialization import reset_submodules


class Custom(nn.Module):
    """Sets its linear's bias to a constant (like Mamba's Δ projection); the linear's own reset would undo it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.proj.bias, 7.0)


def test_outermost_reset_wins_and_containers_are_walked() -> None:
    root = nn.Module()
    root.custom = Custom()
    root.stack = nn.ModuleList([nn.Sequential(nn.Linear(3, 3))])
    plain = root.stack[0][0]
    with torch.no_grad():
        root.custom.proj.bias.zero_()
        plain.weight.zero_()
    reset_submodules(root)
    assert torch.equal(root.custom.proj.bias, torch.full((3,), 7.0))  # Custom's init, not nn.Linear's
    assert plain.weight.abs().sum() > 0  # reached through ModuleList and Sequential
