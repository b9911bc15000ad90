"""Config and spec of ``longhorn``: SSMs as amortized online learners (Liu et al., ICLR 2025) (torch-free)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, BlockSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["BLOCKS", "SPECS", "LonghornConfig"]


@dataclasses.dataclass(kw_only=True)
class LonghornConfig(SequenceConfig):
    """Longhorn: Mamba's block with the state update of online associative recall (no separate forget gate)."""

    arch: str = field("longhorn", "Registry name of the architecture this config builds.")
    d_state: int = field(16, "State size N per channel: the size of the keys k_t and queries q_t.")
    expand: int = field(2, "Inner width d_inner = expand * d_model (the channels x_t the state regresses).")
    d_conv: int = field(4, "Kernel size of the causal depthwise convolution.")
    dt_rank: int | None = field(None, "Rank of the β projection; None means ceil(d_model / 16) (Mamba's Δ rank).")
    conv_bias: bool = field(True, "Bias on the depthwise convolution.")
    bias: bool = field(False, "Biases on the input and output projections.")
    norm: str = field("rmsnorm", "Normalisation of the residual blocks and the final norm: 'rmsnorm' or 'layernorm'.")
    norm_eps: float = field(1e-5, "Epsilon of the norms.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of the token embedding.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "state_size": "d_state",
        "expand_factor": "expand",
        "conv_size": "d_conv",
    }

    def validate(self) -> None:
        """Check sizes are positive and the norm is known."""
        super().validate()
        self.check_positive("d_state", "expand", "d_conv", "dt_rank", "norm_eps", "init_std")
        self.check_choice("norm", ("rmsnorm", "layernorm"))

    @property
    def d_inner(self) -> int:
        """Inner width of each mixer, ``expand * d_model``."""
        return self.expand * self.d_model

    @property
    def beta_rank(self) -> int:
        """The resolved rank of the β projection (``dt_rank`` or ``ceil(d_model / 16)``)."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)


SPECS = (
    ArchSpec(
        name="longhorn",
        family="ssm",
        distribution="edifice-ssm",
        summary="Longhorn: Mamba-style block whose state update solves online associative recall (implicit update).",
        paper=Paper(
            title="Longhorn: State Space Models are Amortized Online Learners",
            authors="Bo Liu, Rui Wang, Lemeng Wu, Yihao Feng, Peter Stone, Qiang Liu",
            year=2025,
            arxiv="2407.14207",
        ),
        config="edifice_ssm.configs.longhorn:LonghornConfig",
        model="edifice_ssm.longhorn:Longhorn",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "d_state": 4, "d_conv": 3, "d_in": 6},
        verification="oracle:Longhorn update S_t = (1 - ε_t k_t²) S_{t-1} + ε_t x_t k_t, ε_t = β_t/(1 + β_t k_tᵀk_t)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)

BLOCKS = (
    BlockSpec(
        "longhorn",
        "edifice_ssm.longhorn:LonghornMixer",
        "Longhorn mixer (online associative-recall state update; sequence-mixer protocol).",
    ),
)
