"""The torch-free half of edifice-vision's temporal CNNs (``conv1d``, ``tcn``): base config and tensor specs.

A temporal CNN maps ``x [B, T, d_in]`` to ``hidden [B, T, d_out]`` (``d_out`` the last layer's channels), or with
``output`` set to a pooling, to ``[B, d_out]``. Causal configurations are stateful: ``step`` feeds new positions
through a rolling buffer of each convolution's last ``dilation * (kernel_size - 1)`` inputs. The torch half is
:class:`edifice_vision._temporal.TemporalConvNet`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from edifice import ArchSpec, Paper
from edifice.config import ArchConfig, field
from edifice.spec import TensorSpec

__all__ = ["TemporalConfig", "temporal_spec"]


@dataclasses.dataclass(kw_only=True)
class TemporalConfig(ArchConfig):
    """Base config of temporal CNNs over ``[B, T, d_in]`` sequences: widths, activation, padding, pooling."""

    d_in: int = field(64, "Feature size of the input x [B, T, d_in].")
    channels: tuple[int, ...] = field((64, 64), "Output channels of each convolutional layer (or residual level).")
    activation: str = field("relu", "Activation after every convolution.")
    dropout: float = field(0.0, "Dropout after every activation (training only).")
    causal: bool = field(True, "Left-pad the convolutions: position t sees only inputs <= t (stateful); else centred.")
    output: str = field("all", "'all' returns every position; 'last', 'mean' or 'max' pool over time to [B, d_out].")

    aliases: ClassVar[Mapping[str, str]] = {"input_size": "d_in", "embed_dim": "d_in", "pooling": "output"}
    spec_properties: ClassVar[tuple[str, ...]] = ("d_out",)

    @property
    def d_out(self) -> int:
        """Channels of the last layer: the output's feature size."""
        return self.channels[-1]

    def validate(self) -> None:
        """Positive sizes, a known activation and pooling, dropout in [0, 1)."""
        super().validate()
        self.check_positive("d_in")
        if not self.channels or any(c < 1 for c in self.channels):
            self.fail("channels", "must list at least one layer, each with >= 1 channel")
        self.check_activation("activation")
        self.check_range("dropout", 0.0, 1.0)
        if self.dropout == 1.0:
            self.fail("dropout", "must be < 1")
        self.check_choice("output", ("all", "last", "mean", "max"))


def temporal_spec(
    name: str, *, summary: str, paper: Paper, config: str, model: str, tiny: Mapping[str, Any], **options: Any
) -> ArchSpec:
    """The :class:`ArchSpec` of a temporal CNN: ``x [B, T, d_in] -> hidden [B, T?, d_out]``, causal and stateful."""
    return ArchSpec(
        name=name,
        family="convolutional",
        distribution="edifice-vision",
        summary=summary,
        paper=paper,
        config=config,
        model=model,
        inputs={"x": TensorSpec(("B", "T", "d_in"), doc="Input sequence, features last.")},
        outputs={
            "hidden": TensorSpec(
                ("B", "T if output == 'all' else None", "d_out"), doc="Last layer's features (pooled unless 'all')."
            )
        },
        tiny=tiny,
        causal=True,
        stateful=True,
        **options,
    )
