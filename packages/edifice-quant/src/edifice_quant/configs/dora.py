"""Config and spec of ``dora``: weight-decomposed low-rank adaptation, m (W + dW) / ||W + dW||_c (torch-free).

The model is :class:`edifice_quant.lora.DoRA`; :func:`edifice_quant.adapters.apply_adapter` puts the same layer on
any model's ``nn.Linear`` layers.
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_quant.configs._adapter import AdapterConfig, adapter_spec

__all__ = ["SPECS", "DoRAConfig"]


@dataclasses.dataclass(kw_only=True)
class DoRAConfig(AdapterConfig):
    """DoRA (Liu et al. 2024, eq. 5): W' = m (W + (alpha/r) B A) / ||W + (alpha/r) B A||_c, the norm detached."""

    arch: str = field("dora", "Registry name of the architecture this config builds.")


LIU = Paper("DoRA: Weight-Decomposed Low-Rank Adaptation", "Liu et al.", 2024, arxiv="2402.09353")

SPECS = (
    adapter_spec(
        "dora",
        "Weight-decomposed LoRA: a trainable magnitude per output times the LoRA-updated direction.",
        LIU,
        "edifice_quant.configs.dora:DoRAConfig",
        "edifice_quant.lora:DoRA",
        interop=("peft",),
        verification="parity:peft LoraConfig(use_dora=True) on the same base, adapter and magnitude weights "
        "(outputs and merged weights, fp32 1e-6), detached column norm, merge/unmerge exactness",
    ),
)
