"""The config both adapted-linear entries (``lora``, ``dora``) share, and their spec builder (torch-free)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from edifice import ArchConfig, ArchSpec, Paper, TensorSpec, field

__all__ = ["AdapterConfig", "adapter_spec"]


@dataclasses.dataclass(kw_only=True)
class AdapterConfig(ArchConfig):
    """An ``nn.Linear(input_size, output_size)`` with a rank-``rank`` adapter scaled by ``alpha / rank``."""

    input_size: int = field(16, "Input features d_in of the adapted linear layer.")
    output_size: int = field(16, "Output features d_out of the adapted linear layer.")
    rank: int = field(8, "Rank r of the update B A (A: [r, d_in], B: [d_out, r]).")
    alpha: float = field(8.0, "Scale numerator: the update is multiplied by alpha / rank.")
    dropout: float = field(0.0, "Dropout probability on the adapter's input, in [0, 1) (peft's lora_dropout).")
    bias: bool = field(True, "The base linear layer has a bias (frozen like its weight).")

    aliases: ClassVar[Mapping[str, str]] = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}

    def validate(self) -> None:
        """Check the sizes and the rank are positive, alpha is positive and dropout lies in [0, 1)."""
        super().validate()
        self.check_positive("input_size", "output_size", "rank", "alpha")
        self.check_range("dropout", 0.0, 1.0)
        if self.dropout == 1.0:
            self.fail("dropout", "must be < 1 (the adapter would never see its input)")


def adapter_spec(name: str, summary: str, paper: Paper, config: str, model: str, **extra: Any) -> ArchSpec:
    """The spec of an adapted linear layer ``x [B, input_size] -> y [B, output_size]``."""
    return ArchSpec(
        name=name,
        family="peft",
        distribution="edifice-quant",
        summary=summary,
        paper=paper,
        config=config,
        model=model,
        inputs={"x": TensorSpec(("B", "input_size"), doc="Input features.")},
        outputs={"y": TensorSpec(("B", "output_size"), doc="Output of the adapted linear layer.")},
        tiny={"input_size": 12, "output_size": 10, "rank": 4, "alpha": 8.0},
        **extra,
    )
