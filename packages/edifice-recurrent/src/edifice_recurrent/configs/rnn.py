"""Config and specs of ``lstm`` and ``gru``: one stacked recurrent module whose cell is fixed by the name (torch-free).

Both names build :class:`edifice_recurrent.rnn.RNN`; ``cell_type`` is fixed per registry name. The stack is exactly
``torch.nn.LSTM``/``torch.nn.GRU`` with ``num_layers=n_layers`` (its weights load from their state dicts).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from edifice import ArchSpec, Converter, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["CELL_TYPES", "CONVERTERS", "SPECS", "RNNConfig"]

#: The recurrent cells, each a registry name of its own.
CELL_TYPES = ("lstm", "gru")


@dataclasses.dataclass(kw_only=True)
class RNNConfig(SequenceConfig):
    """A stack of ``n_layers`` LSTM or GRU layers of width ``d_model``; the first reads ``d_in`` features directly."""

    arch: str = field("lstm", "Registry name of the architecture this config builds.")
    cell_type: Literal["lstm", "gru"] = field("lstm", "Recurrent cell: 'lstm' or 'gru' (fixed by the registry name).")
    bias: bool = field(True, "Input and recurrent biases in every gate (torch.nn.LSTM/GRU's bias).")

    def validate(self) -> None:
        """Check the cell type is known (plus the sequence-backbone checks)."""
        super().validate()
        self.check_choice("cell_type", CELL_TYPES)


HOCHREITER = Paper(
    "Long Short-Term Memory",
    "Hochreiter & Schmidhuber",
    1997,
    url="https://doi.org/10.1162/neco.1997.9.8.1735",
)
CHO = Paper(
    "Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine Translation",
    "Cho et al.",
    2014,
    "1406.1078",
)

_COMMON = {
    "family": "recurrent",
    "distribution": "edifice-recurrent",
    "config": "edifice_recurrent.configs.rnn:RNNConfig",
    "model": "edifice_recurrent.rnn:RNN",
    "inputs": sequence_inputs(),
    "outputs": sequence_outputs(),
    "tiny": {"d_model": 16, "n_layers": 2, "d_in": 8},
    "fixed": ("cell_type",),
    "causal": True,
    "stateful": True,
    "variable_length": True,
    # The fused cuDNN/ATen RNN call is the point of these entries, and Dynamo graph-breaks on it.
    "compile_fullgraph": False,
    "reasons": {
        "no_compile_fullgraph": "Dynamo does not trace torch.nn.LSTM/GRU (graph break; its allow_rnn is experimental)"
    },
}

SPECS = (
    ArchSpec(
        name="lstm",
        summary="Stacked LSTM (torch.nn.LSTM, cuDNN on GPU): gated cell state with input, forget and output gates.",
        paper=HOCHREITER,
        defaults={"cell_type": "lstm"},
        verification="parity:torch.nn.LSTM",
        interop=("torch.nn.LSTM",),
        **_COMMON,  # type: ignore[arg-type]
    ),
    ArchSpec(
        name="gru",
        summary="Stacked GRU (torch.nn.GRU, cuDNN on GPU): update and reset gates over a single hidden state.",
        paper=CHO,
        defaults={"cell_type": "gru"},
        verification="parity:torch.nn.GRU",
        alias_of="lstm",
        interop=("torch.nn.GRU",),
        **_COMMON,  # type: ignore[arg-type]
    ),
)

CONVERTERS = (
    Converter("torch.nn.LSTM", "lstm", "edifice_recurrent.rnn:from_torch_rnn", "A unidirectional torch.nn.LSTM."),
    Converter("torch.nn.GRU", "gru", "edifice_recurrent.rnn:from_torch_rnn", "A unidirectional torch.nn.GRU."),
)
