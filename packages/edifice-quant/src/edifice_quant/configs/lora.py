"""Config and spec of ``lora``: a linear layer with a low-rank adapter, W x + (alpha/r) B A x (torch-free).

The model is :class:`edifice_quant.lora.LoRA`; :func:`edifice_quant.adapters.apply_adapter` puts the same layer on
any model's ``nn.Linear`` layers.
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_quant.configs._adapter import AdapterConfig, adapter_spec

__all__ = ["SPECS", "LoRAConfig"]


@dataclasses.dataclass(kw_only=True)
class LoRAConfig(AdapterConfig):
    """LoRA (Hu et al. 2021, eq. 3): h = W x + (alpha / r) B A dropout(x), W frozen, B initialised to zero."""

    arch: str = field("lora", "Registry name of the architecture this config builds.")


HU = Paper("LoRA: Low-Rank Adaptation of Large Language Models", "Hu et al.", 2021, arxiv="2106.09685")

SPECS = (
    adapter_spec(
        "lora",
        "Low-rank adaptation: a frozen linear layer plus a trainable update (alpha/r) B A, B zero at init.",
        HU,
        "edifice_quant.configs.lora:LoRAConfig",
        "edifice_quant.lora:LoRA",
        interop=("peft",),
        verification="parity:peft LoraConfig(use_dora=False) on the same base and adapter weights (outputs and "
        "merged weights, fp32 1e-6), merge/unmerge exactness, safetensors round trip",
    ),
)
