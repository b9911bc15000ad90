"""Config of ``s4`` (structured state space, DPLR/NPLR HiPPO-LegS) and the block fields S4, S4D and S5 share.

Torch-free. :class:`SSMBlockConfig` holds what every S4-style stack has (state size, step-size range, the block's
activation, GLU, norm); :class:`S4Config` fixes the S4 defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["S4Config", "SSMBlockConfig"]

_NORMS = ("layernorm", "rmsnorm")


@dataclasses.dataclass(kw_only=True)
class SSMBlockConfig(SequenceConfig):
    """Fields of an S4-style stack: each layer is SSM -> activation -> linear (or GLU), residual, norm."""

    d_state: int = field(64, "State size N per channel (S4, S4D) or in all (S5); even, for conjugate pairs.")
    dt_min: float = field(0.001, "Smallest initial step size Δ (log-uniform initialisation).")
    dt_max: float = field(0.1, "Largest initial step size Δ (log-uniform initialisation).")
    activation: str = field("gelu", "Activation after the SSM (the papers use GELU).")
    glu: bool = field(False, "Output projection d -> 2d followed by a GLU instead of a plain d -> d linear.")
    norm: str = field("layernorm", "Normalisation of each residual block: 'layernorm' or 'rmsnorm'.")
    norm_eps: float = field(1e-5, "Epsilon of every norm.")
    norm_position: str = field("post", "'post' (norm(x + f(x)), the S4 block) or 'pre' (x + f(norm(x)), final norm).")

    aliases: ClassVar[Mapping[str, str]] = {**SequenceConfig.aliases, "state_size": "d_state"}
    norm_choices: ClassVar[tuple[str, ...]] = _NORMS
    """The accepted ``norm`` names (S5 adds ``batchnorm``)."""

    def validate(self) -> None:
        """Check the state size is even, the step-size range ordered and the choices known."""
        super().validate()
        self.check_positive("d_state", "dt_min", "dt_max", "norm_eps")
        if self.d_state % 2:
            self.fail("d_state", "must be even (the state is stored as conjugate pairs)")
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")
        self.check_choice("norm", self.norm_choices)
        self.check_choice("norm_position", ("pre", "post"))
        self.check_activation("activation")


@dataclasses.dataclass(kw_only=True)
class S4Config(SSMBlockConfig):
    """S4: per channel, a HiPPO-LegS SSM in diagonal-plus-low-rank form, bilinear discretisation, FFT convolution."""

    arch: str = field("s4", "Registry name of the architecture this config builds.")
    glu: bool = field(
        True, "Output projection d -> 2d followed by a GLU (the authors' S4Block, final_act='glu'), else d -> d."
    )


GU_GOEL_RE = Paper(
    title="Efficiently Modeling Long Sequences with Structured State Spaces",
    authors="Albert Gu, Karan Goel, Christopher Ré",
    year=2022,
    arxiv="2111.00396",
)

#: The tiny config every S4-style entry shares (the contract's sizes).
TINY = {"d_model": 16, "n_layers": 2, "d_state": 8, "d_in": 6}

SPECS = (
    ArchSpec(
        name="s4",
        family="ssm",
        distribution="edifice-ssm",
        summary="S4: HiPPO-LegS state spaces in DPLR form, bilinear-discretised, applied as an FFT long convolution.",
        paper=GU_GOEL_RE,
        config="edifice_ssm.configs.s4:S4Config",
        model="edifice_ssm.s4:S4",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny=TINY,
        verification="oracle:HiPPO-LegS eq. 2, NPLR (Thm. 1), Algorithm 1 kernel = recurrence eq. 3 (arXiv:2111.00396)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
