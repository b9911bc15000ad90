"""The torch-free half of every sequence backbone: its base config and its tensor specs.

A sequence backbone maps ``x [B, T, d_in] -> [B, T, d_model]`` (or, with ``vocab_size`` set, ``input_ids [B, T]`` to
logits ``[B, T, vocab_size]``), optionally pooled to ``[B, ...]`` by ``output="last"|"mean"``. Every family's
sequence config subclasses :class:`SequenceConfig` and describes its tensors with :func:`sequence_inputs` and
:func:`sequence_outputs`, so the fields, aliases and shapes read the same across attention, SSM and recurrent
models. The torch half is :class:`edifice.blocks.backbone.SequenceBackbone`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice.config import ArchConfig, field
from edifice.spec import TensorSpec

__all__ = ["SequenceConfig", "sequence_inputs", "sequence_outputs"]

#: Feature size of ``x``: ``d_in`` when set, else ``d_model`` (spec expression).
_D_IN = "d_in if d_in is not None else d_model"
#: The time axis, dropped when the output is pooled (spec expression).
_T_OUT = "T if output == 'all' else None"


@dataclasses.dataclass(kw_only=True)
class SequenceConfig(ArchConfig):
    """Base config of sequence backbones: width, depth, input kind (features or tokens), pooling and dropout."""

    d_model: int = field(64, "Width of the residual stream.")
    n_layers: int = field(2, "Number of stacked layers.")
    d_in: int | None = field(None, "Feature size of the input x; None means d_model (no input projection).")
    vocab_size: int | None = field(None, "When set, the model takes input_ids [B, T] and returns logits.")
    output: Literal["all", "last", "mean"] = field(
        "all", "'all' returns every position; 'last' the last valid one and 'mean' the masked mean, as [B, ...]."
    )
    dropout: float = field(0.0, "Dropout probability on embeddings and residual branches.")
    tie_embeddings: bool = field(False, "Share the LM head weight with the token embedding (needs vocab_size).")

    #: Names of the original Edifice options, accepted by ``edifice.config``/``from_overrides``.
    aliases: ClassVar[Mapping[str, str]] = {
        "embed_dim": "d_in",
        "input_size": "d_in",
        "hidden_size": "d_model",
        "num_layers": "n_layers",
        "num_heads": "n_heads",
        "num_kv_heads": "n_kv_heads",
    }

    def validate(self) -> None:
        """Check sizes are positive, dropout lies in [0, 1) and tied embeddings have a vocabulary."""
        super().validate()
        self.check_positive("d_model", "n_layers", "d_in", "vocab_size")
        self.check_range("dropout", 0.0, 1.0)
        if self.dropout == 1.0:
            self.fail("dropout", "must be < 1")
        if self.tie_embeddings and self.vocab_size is None:
            self.fail("tie_embeddings", "needs vocab_size (there is no token embedding to tie to)")


def sequence_inputs(*, packed: bool = False) -> dict[str, TensorSpec]:
    """Input specs of a sequence backbone: ``x`` or ``input_ids``, an optional ``attention_mask`` (and ``cu_seqlens``).

    ``packed=True`` adds ``cu_seqlens`` (int32 ``[N + 1]`` cumulative lengths of the sequences packed along ``T`` of
    a batch of one) for backbones whose mechanism supports packing.
    """
    specs = {
        "x": TensorSpec(("B", "T", _D_IN), when="vocab_size is None", doc="Input features."),
        "input_ids": TensorSpec(
            ("B", "T"), dtype="int64", domain="int[0, vocab_size)", when="vocab_size is not None", doc="Token ids."
        ),
        "attention_mask": TensorSpec(
            ("B", "T"), dtype="bool", domain="bool", optional=True, doc="Padding mask: True marks a valid position."
        ),
    }
    if packed:
        specs["cu_seqlens"] = TensorSpec(
            ("N + 1",),
            dtype="int32",
            domain="int[0, T]",
            optional=True,
            doc="Cumulative sequence lengths of packed sequences (starts at 0, ends at T; batch size 1).",
        )
    return specs


def sequence_outputs(*, aux_loss_when: str | None = None) -> dict[str, TensorSpec]:
    """Output specs: ``hidden [B, T?, d_model]`` or ``logits [B, T?, vocab_size]``, and ``aux_loss`` if asked for.

    ``T`` is dropped when ``output`` pools. ``aux_loss_when`` is a spec condition (e.g. ``"n_experts > 0"``) under
    which the model returns a :class:`~edifice.blocks.backbone.SequenceOutput` with a scalar ``aux_loss`` field.
    """
    specs = {
        "hidden": TensorSpec(("B", _T_OUT, "d_model"), when="vocab_size is None", doc="Final hidden states."),
        "logits": TensorSpec(("B", _T_OUT, "vocab_size"), when="vocab_size is not None", doc="Next-token logits."),
    }
    if aux_loss_when is not None:
        specs["aux_loss"] = TensorSpec((), when=aux_loss_when, doc="Auxiliary training loss, already weighted.")
    return specs
