"""Config and spec of ``gated_ssm``: an Edifice-original gated selective diagonal SSM (docs/design/gated_ssm.md).

Torch-free. The fields are Mamba's (the block reuses ``MambaMixer``'s parameters and initialisation); the state
update is the relaxation of eq. (6) of the design note, computed by the scan ``scan`` (alias ``scan_mode``) picks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, BlockSpec, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.mamba import MambaConfig

__all__ = ["BLOCKS", "SPECS", "GatedSSMConfig"]


@dataclasses.dataclass(kw_only=True)
class GatedSSMConfig(MambaConfig):
    """Gated SSM: causal conv, selective step Δ, forget gate exp(-Δλ) and input gate 1 - exp(-Δλ), SiLU output gate."""

    arch: str = field("gated_ssm", "Registry name of the architecture this config builds.")
    scan: str = field(
        "chunked", "Scan of the recurrence: 'chunked' (the linear_recurrence op), 'cumsum' or 'hillis_steele'."
    )

    aliases: ClassVar[Mapping[str, str]] = {**MambaConfig.aliases, "scan_mode": "scan"}


SPECS = (
    ArchSpec(
        name="gated_ssm",
        family="ssm",
        distribution="edifice-ssm",
        summary="Gated SSM (Edifice-original): Mamba-style block whose diagonal state relaxes to B x (gates a, 1 - a).",
        paper=None,
        config="edifice_ssm.configs.gated_ssm:GatedSSMConfig",
        model="edifice_ssm.gated_ssm:GatedSSM",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "d_state": 4, "d_conv": 3, "d_in": 6},
        verification="oracle:docs/design/gated_ssm.md eqs. 1-8 (fp64 loop); all scan modes agree",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)

BLOCKS = (
    BlockSpec(
        "gated_ssm",
        "edifice_ssm.gated_ssm:GatedSSMMixer",
        "Gated selective diagonal SSM mixer (relaxation update; sequence-mixer protocol).",
    ),
)
