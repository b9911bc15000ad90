"""The registry spec shared by entries built on the decoder_only stack (torch-free).

Such entries are causal, stateful (a KV cache or its compressed form), handle padding masks, take ``input_ids`` or
features and return an ``aux_loss`` only with the Mixtral-style MoE FFN; only names, papers, tiny configs,
verification and interop differ.
"""

from __future__ import annotations

from typing import Any

from edifice import ArchSpec, Paper
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice.spec import TensorSpec

__all__ = ["decoder_entry_spec"]


def decoder_entry_spec(
    name: str,
    *,
    summary: str,
    paper: Paper,
    config: str,
    model: str,
    tiny: dict[str, Any],
    verification: str,
    interop: tuple[str, ...] = (),
    extra_inputs: dict[str, TensorSpec] | None = None,
) -> ArchSpec:
    """An :class:`ArchSpec` in the ``attention`` family of edifice-attention with decoder_only's flags."""
    return ArchSpec(
        name=name,
        family="attention",
        distribution="edifice-attention",
        summary=summary,
        paper=paper,
        config=config,
        model=model,
        tiny=tiny,
        inputs={**sequence_inputs(), **(extra_inputs or {})},
        outputs=sequence_outputs(aux_loss_when="n_experts > 0"),
        causal=True,
        stateful=True,
        variable_length=True,
        verification=verification,
        interop=interop,
    )
