"""The spec shared by the softmax-attention variants built on ``decoder_only`` (torch-free)."""

from __future__ import annotations

from edifice import ArchSpec, Paper
from edifice.sequence import sequence_inputs, sequence_outputs

__all__ = ["variant_spec"]


def variant_spec(name: str, summary: str, paper: Paper, **extra: object) -> ArchSpec:
    """A causal, stateful, padding-exact ``decoder_only`` variant: ``configs/<name>.py`` and ``<name>.py`` by name."""
    camel = "".join(part.capitalize() for part in name.split("_"))
    config = extra.pop("config", f"edifice_attention.configs.{name}:{camel}Config")
    model = extra.pop("model", f"edifice_attention.{name}:{camel}")
    return ArchSpec(
        name=name,
        family="attention",
        distribution="edifice-attention",
        summary=summary,
        paper=paper,
        config=config,  # type: ignore[arg-type]
        model=model,  # type: ignore[arg-type]
        inputs=sequence_inputs(),
        outputs=sequence_outputs(aux_loss_when="n_experts > 0"),
        causal=True,
        stateful=True,
        variable_length=True,
        **extra,  # type: ignore[arg-type]
    )
