"""Config and specs of ``min_gru`` and ``min_lstm`` (Feng et al. 2024), one module with the cell fixed by the name.

Both names build :class:`edifice_recurrent.min_rnn.MinRNN` (torch-free module).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["MIN_CELL_TYPES", "SPECS", "MinRNNConfig"]

#: The minimal cells, each a registry name of its own.
MIN_CELL_TYPES = ("min_gru", "min_lstm")


@dataclasses.dataclass(kw_only=True)
class MinRNNConfig(SequenceConfig):
    """Residual blocks of a minGRU/minLSTM mixer (trained by a parallel log-space scan) and an optional MLP."""

    arch: str = field("min_gru", "Registry name of the architecture this config builds.")
    cell_type: Literal["min_gru", "min_lstm"] = field(
        "min_gru", "Minimal cell: 'min_gru' or 'min_lstm' (fixed by the registry name)."
    )
    expand: int = field(1, "Hidden state size per layer is expand * d_model (a down projection follows when > 1).")
    d_ff: int | None = field(None, "Hidden size of each block's MLP; None means 4*d_model, 0 means no MLP.")
    norm: Literal["rmsnorm", "layernorm"] = field("layernorm", "Pre-norm of every sub-layer and the final norm.")
    bias: bool = field(True, "Biases on the gate and candidate projections.")

    def validate(self) -> None:
        """Check the cell type is known and the sizes are positive."""
        super().validate()
        self.check_choice("cell_type", MIN_CELL_TYPES)
        self.check_choice("norm", ("rmsnorm", "layernorm"))
        self.check_positive("expand")
        self.check_positive("d_ff", allow_zero=True)

    @property
    def d_inner(self) -> int:
        """Size of the recurrent state ``h`` of each layer."""
        return self.expand * self.d_model

    @property
    def ffn_hidden(self) -> int:
        """The resolved MLP hidden size (0: no MLP)."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff


FENG = Paper("Were RNNs All We Needed?", "Feng, Tung, Ahmed, Bengio & Hajimirsadeghi", 2024, "2410.01201")

_COMMON = {
    "family": "recurrent",
    "distribution": "edifice-recurrent",
    "paper": FENG,
    "config": "edifice_recurrent.configs.min_rnn:MinRNNConfig",
    "model": "edifice_recurrent.min_rnn:MinRNN",
    "inputs": sequence_inputs(),
    "outputs": sequence_outputs(),
    "tiny": {"d_model": 16, "n_layers": 2, "d_in": 8, "d_ff": 32},
    "fixed": ("cell_type",),
    "causal": True,
    "stateful": True,
    "variable_length": True,
}

SPECS = (
    ArchSpec(
        name="min_gru",
        summary="minGRU: a GRU whose gates read only x_t, trained in parallel by a log-space scan, stepped as an RNN.",
        defaults={"cell_type": "min_gru"},
        verification="oracle:Feng et al. 2024 minGRU sequential recurrence (§3.1.3) vs the parallel log-space scan",
        **_COMMON,  # type: ignore[arg-type]
    ),
    ArchSpec(
        name="min_lstm",
        summary="minLSTM: normalised forget/input gates on x_t only, trained by a log-space scan, stepped as an RNN.",
        defaults={"cell_type": "min_lstm"},
        verification="oracle:Feng et al. 2024 minLSTM sequential recurrence (§3.2.3) vs the parallel log-space scan",
        alias_of="min_gru",
        **_COMMON,  # type: ignore[arg-type]
    ),
)
