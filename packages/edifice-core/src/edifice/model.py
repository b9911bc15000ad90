"""The base class of every Edifice architecture module."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
from torch import nn

from edifice.config import ArchConfig
from edifice.initialization import reset_submodules
from edifice.inputs import example_inputs, validate_inputs
from edifice.registry import get_spec
from edifice.spec import ArchSpec

__all__ = ["Model"]


class Model(nn.Module):
    """An architecture built from its config: input checking, initialisation and gradient checkpointing hooks.

    Subclasses set :attr:`config_class`, build their layers in ``__init__``, call :meth:`check_inputs` at the top of
    ``forward`` and implement :meth:`reset_parameters` with the paper's initialisation.
    """

    config_class: ClassVar[type[ArchConfig]] = ArchConfig

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.grad_checkpointing = False

    @property
    def arch(self) -> str:
        """The registry name this module was built as."""
        return self.config.arch

    @property
    def spec(self) -> ArchSpec:
        """The registered spec of :attr:`arch`."""
        return get_spec(self.config.arch)

    def check_inputs(self, **inputs: Any) -> dict[str, int]:
        """Validate inputs against the spec, this module's device and floating dtype; returns the symbol sizes found.

        A no-op under ``torch.compile``. A module without parameters or buffers accepts inputs on any device and of
        any floating dtype.
        """
        if torch.compiler.is_compiling():
            return {}
        reference = next(itertools.chain(self.parameters(), self.buffers()), None)
        floating = next((p for p in self.parameters() if p.is_floating_point()), None)
        return validate_inputs(
            self.spec,
            self.config,
            inputs,
            device=reference.device if reference is not None else None,
            dtype=floating.dtype if floating is not None else None,
        )

    def example_inputs(self, batch_size: int = 2, **dims: int) -> dict[str, torch.Tensor]:
        """Random inputs for this module, on its device."""
        device = next(self.parameters(), torch.empty(0)).device
        return example_inputs(self.spec, self.config, batch_size, device=device, dims=dims)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter as the paper prescribes (default: each submodule's own ``reset_parameters``).

        A submodule that defines ``reset_parameters`` owns the initialisation of everything inside it, so the walk
        does not descend into it: resetting its children afterwards would overwrite a deliberate initialisation
        (Mamba's Δ-projection bias is set by the mixer, not by its ``nn.Linear``). Containers without one (lists,
        sequentials) are walked through.
        """
        reset_submodules(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute layer activations in the backward pass to save memory (gradients are unchanged)."""
        self.grad_checkpointing = enable

    def extra_repr(self) -> str:
        return f"arch={self.config.arch!r}"
