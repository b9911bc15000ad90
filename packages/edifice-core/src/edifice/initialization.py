"""Initialisation helpers shared by every module: who resets what when a model is re-initialised."""

from __future__ import annotations

from torch import nn

__all__ = ["reset_submodules"]


def reset_submodules(module: nn.Module) -> None:
    """Call ``reset_parameters`` on the outermost submodules of ``module`` that define it (not on ``module`` itself).

    A submodule with its own ``reset_parameters`` owns the initialisation of everything inside it, so the walk does
    not descend into it: resetting its children afterwards would overwrite a deliberate initialisation (a Mamba
    mixer sets its Δ projection's bias; its ``nn.Linear`` would reset it to PyTorch's default). Containers without
    one (``nn.ModuleList``, ``nn.Sequential``) are walked through.
    """
    for child in module.children():
        reset = getattr(child, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            reset_submodules(child)
