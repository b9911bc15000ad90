"""Config of ``s5``: one multi-input multi-output diagonal SSM per layer, computed by a parallel scan (torch-free)."""

from __future__ import annotations

import dataclasses

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.s4 import TINY, SSMBlockConfig

__all__ = ["S5Config"]


@dataclasses.dataclass(kw_only=True)
class S5Config(SSMBlockConfig):
    """S5: a MIMO diagonal SSM with state size P (= d_state) shared by all channels, HiPPO-N block initialisation."""

    arch: str = field("s5", "Registry name of the architecture this config builds.")
    n_blocks: int = field(1, "Blocks J of the block-diagonal HiPPO-N initialisation of A (d_state / n_blocks even).")
    discretization: str = field("zoh", "Discretisation of the continuous system: 'zoh' or 'bilinear'.")

    def validate(self) -> None:
        """Check the blocks divide the state into even parts and the discretisation is known."""
        super().validate()
        self.check_positive("n_blocks")
        self.check_divides("n_blocks", "d_state")
        if (self.d_state // self.n_blocks) % 2:
            self.fail("n_blocks", f"must leave an even block size (d_state={self.d_state} / n_blocks is odd)")
        self.check_choice("discretization", ("zoh", "bilinear"))


SPECS = (
    ArchSpec(
        name="s5",
        family="ssm",
        distribution="edifice-ssm",
        summary="S5: one MIMO diagonal complex SSM per layer (HiPPO-N init, ZOH), computed by a parallel scan.",
        paper=Paper(
            title="Simplified State Space Layers for Sequence Modeling",
            authors="Jimmy T.H. Smith, Andrew Warrington, Scott W. Linderman",
            year=2023,
            arxiv="2208.04933",
        ),
        config="edifice_ssm.configs.s5:S5Config",
        model="edifice_ssm.s5:S5",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={**TINY, "n_blocks": 2},
        verification="oracle:S5 MIMO recurrence (§2-3, ZOH), parallel scan = sequential loop (arXiv:2208.04933)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
