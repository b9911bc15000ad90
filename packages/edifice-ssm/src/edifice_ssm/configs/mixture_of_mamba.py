"""Config and spec of ``mixture_of_mamba``: Mamba blocks with modality-specific projections (torch-free).

Each token carries a modality id (the input ``modality_mask [B, T]``, ints in ``[0, n_modalities)``); the Mamba
block's ``in_proj``, ``x_proj``, ``dt_proj`` and ``out_proj`` are decoupled per modality (those named in
``split_projections``; all four in the paper), while the causal convolution, ``A`` and ``D`` are shared, so the
selective scan still runs over the whole interleaved multi-modal sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, TensorSpec, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.mamba import MambaConfig

__all__ = ["SPECS", "MixtureOfMambaConfig"]

#: The projections of the Mamba block that can be made modality-specific.
PROJECTIONS = ("in_proj", "x_proj", "dt_proj", "out_proj")


@dataclasses.dataclass(kw_only=True)
class MixtureOfMambaConfig(MambaConfig):
    """Mixture-of-Mamba: pre-norm residual Mamba blocks whose projections are chosen by each token's modality."""

    arch: str = field("mixture_of_mamba", "Registry name of the architecture this config builds.")
    n_modalities: int = field(2, "Number of modalities; modality_mask holds ints in [0, n_modalities).")
    split_projections: tuple[str, ...] = field(
        PROJECTIONS, "Projections made modality-specific (the paper decouples all four; the rest are shared)."
    )

    aliases: ClassVar[Mapping[str, str]] = {**MambaConfig.aliases, "num_modalities": "n_modalities"}

    def validate(self) -> None:
        """Check the number of modalities and the projection names."""
        super().validate()
        self.check_positive("n_modalities")
        unknown = [p for p in self.split_projections if p not in PROJECTIONS]
        if unknown or len(set(self.split_projections)) != len(self.split_projections):
            self.fail("split_projections", f"must be distinct names among {', '.join(PROJECTIONS)}")


LIANG = Paper(
    "Mixture-of-Mamba: Enhancing Multi-Modal State-Space Models with Modality-Aware Sparsity",
    "Liang, Shen, Zhang, Dong, Zettlemoyer, Yu",
    2025,
    "2501.16295",
)

SPECS = (
    ArchSpec(
        name="mixture_of_mamba",
        family="ssm",
        distribution="edifice-ssm",
        summary="Mixture-of-Mamba: Mamba blocks with per-modality in/x/dt/out projections chosen by modality_mask.",
        paper=LIANG,
        config="edifice_ssm.configs.mixture_of_mamba:MixtureOfMambaConfig",
        model="edifice_ssm.mixture_of_mamba:MixtureOfMamba",
        inputs={
            **sequence_inputs(),
            "modality_mask": TensorSpec(
                ("B", "T"),
                dtype="int64",
                domain="int[0, n_modalities)",
                when="n_modalities > 1",
                doc="Modality of each token; selects its in/x/dt/out projections.",
            ),
        },
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "d_in": 6, "d_state": 4, "d_conv": 3, "n_modalities": 2},
        verification="oracle:Mixture-of-Mamba block (per-token modality projections, shared conv/A/D; Mamba eqs. "
        "2a-2b/4) as a naive fp64 loop",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
