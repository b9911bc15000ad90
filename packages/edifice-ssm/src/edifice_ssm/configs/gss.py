"""Config and spec of ``gss``: Gated State Space layers (Mehta et al., 2023) as a sequence model (torch-free)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, BlockSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["BLOCKS", "SPECS", "GSSConfig"]


@dataclasses.dataclass(kw_only=True)
class GSSConfig(SequenceConfig):
    """GSS: per layer, a GELU-gated unit whose context comes from a reduced-width diagonal state space (DSS)."""

    arch: str = field("gss", "Registry name of the architecture this config builds.")
    expand: int = field(4, "Gate width F = expand * d_model (the pseudocode's F = 4E).")
    d_ssm: int | None = field(None, "Width H of the DSS (the pseudocode's H = E/4); None means max(1, d_model // 4).")
    d_state: int = field(512, "State size N of the simplified DSS kernel (complex modes shared by all H channels).")
    activation: str = field("gelu", "Activation of the two input projections (the paper's GELU).")
    bias: bool = field(True, "Biases on the four dense projections (Flax Dense's default, as in the pseudocode).")
    norm_eps: float = field(1e-5, "Epsilon of the LayerNorms (block, DSS input and final).")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "state_size": "d_state",
        "expand_factor": "expand",
    }

    def validate(self) -> None:
        """Check every width and the epsilon are positive and the activation is known."""
        super().validate()
        self.check_positive("expand", "d_ssm", "d_state", "norm_eps")
        self.check_choice("activation", ("gelu", "gelu_tanh", "silu", "relu"))

    @property
    def ssm_width(self) -> int:
        """The resolved DSS width H (``d_ssm`` or ``max(1, d_model // 4)``)."""
        return self.d_ssm if self.d_ssm is not None else max(1, self.d_model // 4)

    @property
    def d_inner(self) -> int:
        """The gate width F = ``expand * d_model``."""
        return self.expand * self.d_model


SPECS = (
    ArchSpec(
        name="gss",
        family="ssm",
        distribution="edifice-ssm",
        summary="GSS: GELU-gated unit around a reduced-width simplified DSS (FFT long convolution; recurrent decode).",
        paper=Paper(
            title="Long Range Language Modeling via Gated State Spaces",
            authors="Harsh Mehta, Ankit Gupta, Ashok Cutkosky, Behnam Neyshabur",
            year=2023,
            arxiv="2206.13947",
        ),
        config="edifice_ssm.configs.gss:GSSConfig",
        model="edifice_ssm.gss:GSS",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "expand": 2, "d_ssm": 4, "d_state": 8, "d_in": 6},
        verification="oracle:GSS Fig. 1 pseudocode + DSS-EXP kernel (Δ = 1) = diagonal recurrence (arXiv:2206.13947)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)

BLOCKS = (
    BlockSpec(
        "gss",
        "edifice_ssm.gss:GSSMixer",
        "GSS unit (GELU gate around a reduced-width simplified DSS; sequence-mixer protocol).",
    ),
)
