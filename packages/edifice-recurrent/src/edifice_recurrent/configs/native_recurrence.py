"""Config and spec of ``native_recurrence``: one stack for six minimal gated linear recurrences (torch-free).

An Edifice-original design (docs/design/native_recurrence.md): ``recurrence_type`` picks minGRU, minLSTM (Feng et al.
2024), an ELU-candidate GRU, a real-candidate GRU, a diagonal input-gated linear RNN or Griffin's RG-LRU; every type
is ``h_t = a_t ⊙ h_{t-1} + b_t`` with gates that read only ``x_t``. See :mod:`edifice_recurrent.native_recurrence`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["LOG_SPACE_TYPES", "RECURRENCE_TYPES", "SPECS", "NativeRecurrenceConfig"]

#: Every recurrence type, in the order of docs/design/native_recurrence.md.
RECURRENCE_TYPES = ("min_gru", "min_lstm", "elu_gru", "real_gru", "diag_linear", "rg_lru")
#: The types whose ``a_t, b_t`` are positive, trained with the log-space scan (the others use the linear scan).
LOG_SPACE_TYPES = ("min_gru", "min_lstm", "elu_gru")

RecurrenceType = Literal["min_gru", "min_lstm", "elu_gru", "real_gru", "diag_linear", "rg_lru"]


@dataclasses.dataclass(kw_only=True)
class NativeRecurrenceConfig(SequenceConfig):
    """Pre-norm residual blocks around a minimal linear recurrence (``recurrence_type``), optional MLP, final norm."""

    arch: str = field("native_recurrence", "Registry name of the architecture this config builds.")
    recurrence_type: RecurrenceType = field(
        "elu_gru", "Recurrence: 'min_gru', 'min_lstm', 'elu_gru', 'real_gru', 'diag_linear' or 'rg_lru'."
    )
    expand: int = field(1, "Recurrent state size per layer is expand * d_model (a down projection follows when > 1).")
    d_ff: int = field(0, "Hidden size of each block's GeLU MLP; 0 means no MLP (the original layout).")
    norm: Literal["layernorm", "rmsnorm"] = field("layernorm", "Pre-norm of every sub-layer and the final norm.")
    bias: bool = field(True, "Bias on the gate/candidate projection.")
    rg_lru_c: float = field(8.0, "RG-LRU only: the constant c of a_t = sigma(Lambda)^(c r_t) (Griffin §2.4).")

    aliases: ClassVar[Mapping[str, str]] = {**SequenceConfig.aliases, "mlp_dim": "d_ff"}

    def validate(self) -> None:
        """Check the recurrence type and norm are known and the sizes are positive."""
        super().validate()
        self.check_choice("recurrence_type", RECURRENCE_TYPES)
        self.check_choice("norm", ("layernorm", "rmsnorm"))
        self.check_positive("expand", "rg_lru_c")
        self.check_positive("d_ff", allow_zero=True)

    @property
    def d_inner(self) -> int:
        """Size of the recurrent state ``h`` of each layer."""
        return self.expand * self.d_model


SPECS = (
    ArchSpec(
        name="native_recurrence",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="Minimal gated linear recurrences (minGRU/minLSTM/ELU-GRU/real-GRU/diagonal/RG-LRU) in one stack.",
        paper=Paper(
            "Native recurrence (Edifice-original design; equations in docs/design/native_recurrence.md)",
            "Edifice; after Feng et al. 2024 (arXiv:2410.01201) and De et al. 2024 (arXiv:2402.19427)",
            2025,
            url="docs/design/native_recurrence.md",
        ),
        config="edifice_recurrent.configs.native_recurrence:NativeRecurrenceConfig",
        model="edifice_recurrent.native_recurrence:NativeRecurrence",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "d_in": 8},
        verification="oracle:docs/design/native_recurrence.md (every recurrence_type stepped in fp64 vs the scan)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
