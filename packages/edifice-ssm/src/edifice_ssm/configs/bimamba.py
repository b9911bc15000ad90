"""Config and spec of ``bimamba``: bidirectional Mamba (Vision Mamba's bidirectional block, Zhu et al. 2024).

Torch-free. The fields are Mamba's (each direction is a :class:`~edifice_ssm.mamba.MambaMixer`) plus how the two
directions are tied and combined, and an optional chunked evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.mamba import MambaConfig

__all__ = ["COMBINES", "SPECS", "BiMambaConfig"]

#: How the forward and backward directions are merged.
COMBINES = ("sum", "mean", "concat")


@dataclasses.dataclass(kw_only=True)
class BiMambaConfig(MambaConfig):
    """BiMamba: per layer, a forward Mamba scan and a backward one over the reversed sequence, combined."""

    arch: str = field("bimamba", "Registry name of the architecture this config builds.")
    combine: str = field(
        "sum", "Merge of the two directions: 'sum' (Vim, Algorithm 1), 'mean' (Vim's code), or 'concat' + a projection."
    )
    share_projections: bool = field(
        True, "Share in_proj (x, z) and out_proj between the directions, as Vim's block does; else two full mixers."
    )
    chunk_size: int | None = field(
        None, "Evaluate each direction in chunks of this many positions, carrying its state (same result); None: whole."
    )

    aliases: ClassVar[Mapping[str, str]] = {**MambaConfig.aliases}

    def validate(self) -> None:
        """Check the combine mode, the chunk size, and that a shared ``out_proj`` is not summed with its bias twice."""
        super().validate()
        self.check_choice("combine", COMBINES)
        self.check_positive("chunk_size")
        if self.bias and self.share_projections and self.combine == "sum":
            self.fail("bias", "with share_projections and combine='sum' would add the shared out_proj bias twice")


SPECS = (
    ArchSpec(
        name="bimamba",
        family="ssm",
        distribution="edifice-ssm",
        summary="BiMamba (Vision Mamba): a forward and a backward Mamba scan per layer, summed; non-causal.",
        paper=Paper(
            title="Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model",
            authors="Lianghui Zhu, Bencheng Liao, Qian Zhang, Xinlong Wang, Wenyu Liu, Xinggang Wang",
            year=2024,
            arxiv="2401.09417",
        ),
        config="edifice_ssm.configs.bimamba:BiMambaConfig",
        model="edifice_ssm.bimamba:BiMamba",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        # One layer already holds two Mamba mixers (the contract's compile check traces every one of them).
        tiny={"d_model": 16, "n_layers": 1, "d_state": 4, "d_conv": 3, "d_in": 6},
        verification="parity:transformers.MambaMixer (forward on x + backward on the reversed x, Vim Algorithm 1)",
        causal=False,
        stateful=False,
        variable_length=True,
        reasons={
            "causal": "bidirectional: every position reads the whole sequence (the backward scan sees the future)",
            "stateful": "bidirectional: there is no left-to-right decoding state (use chunk_size for bounded memory)",
        },
    ),
)
