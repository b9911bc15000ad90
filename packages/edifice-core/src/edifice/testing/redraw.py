"""Redraw every parameter of a module before a parity test, so no initialisation can hide a mapping or a bug.

Reference implementations initialise many parameters to constants -- biases to zero, norm gains to one, transformers'
weights to N(0, 0.02). A parity test at that initialisation cannot see a parameter that is mapped to the wrong place,
a bias that leaks into padded positions, or a norm applied twice: the constant makes both sides agree by accident.
:func:`redraw_parameters` adds seeded noise to *every* parameter::

    hf = MambaForCausalLM(config)
    redraw_parameters(hf, seed=1)  # then convert and compare

Noise is added to the initial value rather than replacing it, so the ranges an initialisation sets on purpose (Mamba's
``A_log`` and ``Δ`` bias, a HiPPO matrix) stay plausible while every entry still moves:

* gains of normalisation layers (1-D ``weight`` of a module whose class name contains ``Norm``): ``+ U(-½, ½)``, so
  ones become ``U(½, 3/2)``;
* other vectors (biases, skips, per-channel scales, log-decays): ``+ N(0, vector_std²)``;
* matrices and higher-rank weights (``[out, in, ...]``): ``+ N(0, 1 / fan_in)`` with ``fan_in`` the product of all
  dimensions but the first, so a projection's output stays of unit scale however small the reference's init is;
* scalars: ``+ N(0, vector_std²)``.

Parameters whose name matches a glob of ``keep`` are left alone (a parameter with a constrained domain the noise
would break, say so in the test).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["redraw_parameters"]


def _is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (LayerNorm, RMSNorm, GroupNorm, transformers' ``*RMSNorm``, ...)."""
    return "norm" in type(module).__name__.lower()


@torch.no_grad()
def redraw_parameters(
    module: nn.Module, *, seed: int = 0, vector_std: float = 0.3, keep: Iterable[str] = ()
) -> nn.Module:
    """Add seeded noise to every parameter of ``module`` (in place) except those matching ``keep``; returns it."""
    keep = tuple(keep)
    gen = torch.Generator().manual_seed(seed)
    norm_gains = {
        id(p)
        for m in module.modules()
        if _is_norm(m)
        for name, p in m.named_parameters(recurse=False)
        if name == "weight" and p.dim() == 1
    }
    for name, p in module.named_parameters():  # shared (tied) parameters come once
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in keep):
            continue
        if p.is_complex():
            raise TypeError(f"redraw_parameters: parameter {name!r} is complex; store it as real pairs or keep it")
        if id(p) in norm_gains:
            noise = torch.rand(p.shape, generator=gen, dtype=torch.float32) - 0.5
        elif p.dim() >= 2:
            fan_in = p[0].numel()
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * fan_in**-0.5
        else:
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * vector_std
        p.add_(noise.to(device=p.device, dtype=p.dtype))
    return module
