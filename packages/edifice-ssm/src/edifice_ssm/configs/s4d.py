"""Config of ``s4d``: diagonal state spaces (S4D-Inv / S4D-Lin / S4D-LegS initialisations, ZOH) (torch-free)."""

from __future__ import annotations

import dataclasses

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.s4 import TINY, SSMBlockConfig

__all__ = ["S4DConfig"]


@dataclasses.dataclass(kw_only=True)
class S4DConfig(SSMBlockConfig):
    """S4D: per channel, a diagonal complex SSM whose convolution kernel is a Vandermonde product."""

    arch: str = field("s4d", "Registry name of the architecture this config builds.")
    init: str = field(
        "lin",
        "Initialisation of the diagonal A: 'lin' (S4D-Lin, the authors' standalone s4d.py), 'inv' (S4D-Inv) or 'legs' "
        "(S4D-LegS).",
    )
    glu: bool = field(True, "Output projection d -> 2d followed by a GLU (the authors' S4D block), else d -> d.")
    discretization: str = field("zoh", "Discretisation of the continuous system: 'zoh' or 'bilinear'.")

    def validate(self) -> None:
        """Check the initialisation and discretisation are known."""
        super().validate()
        self.check_choice("init", ("inv", "lin", "legs"))
        self.check_choice("discretization", ("zoh", "bilinear"))


SPECS = (
    ArchSpec(
        name="s4d",
        family="ssm",
        distribution="edifice-ssm",
        summary="S4D: diagonal complex state spaces (S4D-Inv/Lin init, ZOH) as a Vandermonde-kernel FFT convolution.",
        paper=Paper(
            title="On the Parameterization and Initialization of Diagonal State Space Models",
            authors="Albert Gu, Ankit Gupta, Karan Goel, Christopher Ré",
            year=2022,
            arxiv="2206.11893",
        ),
        config="edifice_ssm.configs.s4d:S4DConfig",
        model="edifice_ssm.s4d:S4D",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny=TINY,
        verification="oracle:S4D-Inv/Lin init (§4), ZOH, Vandermonde kernel = diagonal recurrence (arXiv:2206.11893)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
