"""Config of ``s5``: one multi-input multi-output diagonal SSM per layer, computed by a parallel scan (torch-free)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.s4 import TINY, SSMBlockConfig

__all__ = ["S5_BLOCKS", "S5Config"]

#: The S5 block's output options, as the authors' ``activation_fn`` (``s5/layers.py``), and ``linear``: the S4 block.
S5_BLOCKS = ("half_glu1", "half_glu2", "full_glu", "gelu", "linear")


@dataclasses.dataclass(kw_only=True)
class S5Config(SSMBlockConfig):
    """S5: a MIMO diagonal SSM with state size P (= d_state) shared by all channels, HiPPO-N block initialisation.

    The block defaults are the authors' (``run_train.py``): half-GLU output, pre-norm BatchNorm (momentum 0.95 in
    flax's convention, 0.05 in torch's), no final norm.
    """

    arch: str = field("s5", "Registry name of the architecture this config builds.")
    schema_version: int = field(2, "Version of this config's schema; bumped when fields change meaning.")

    #: Schema 2 added ``block`` (the authors' half-GLU by default); earlier files were the S4-style block.
    schema_changes: ClassVar[Mapping[int, Mapping[str, Any]]] = {2: {"block": "linear"}}
    n_blocks: int = field(1, "Blocks J of the block-diagonal HiPPO-N initialisation of A (d_state / n_blocks even).")
    discretization: str = field("zoh", "Discretisation of the continuous system: 'zoh' or 'bilinear'.")
    block: str = field(
        "half_glu1",
        "What follows the SSM, as the authors' activation_fn: 'half_glu1' (g = GELU(y), g * sigmoid(W g)), "
        "'half_glu2' (y * sigmoid(W GELU(y))), 'full_glu' (W1 g * sigmoid(W2 g)), 'gelu' (GELU(y) only) or 'linear' "
        "(the S4 block: W GELU(y), or a GLU with glu=True).",
    )
    norm: str = field("batchnorm", "Normalisation of each residual block: 'batchnorm', 'layernorm' or 'rmsnorm'.")
    norm_position: str = field("pre", "'pre' (x + f(norm(x)), the authors' default) or 'post' (norm(x + f(x))).")
    bn_momentum: float = field(0.05, "BatchNorm's running-statistics momentum, torch's convention (flax's 0.95).")

    norm_choices: ClassVar[tuple[str, ...]] = ("batchnorm", *SSMBlockConfig.norm_choices)

    def validate(self) -> None:
        """Check the blocks divide the state into even parts and the discretisation and block are known."""
        super().validate()
        self.check_positive("n_blocks")
        self.check_divides("n_blocks", "d_state")
        if (self.d_state // self.n_blocks) % 2:
            self.fail("n_blocks", f"must leave an even block size (d_state={self.d_state} / n_blocks is odd)")
        self.check_choice("discretization", ("zoh", "bilinear"))
        self.check_choice("block", S5_BLOCKS)
        if self.glu and self.block != "linear":
            self.fail("glu", f"applies to block='linear' only (block={self.block!r} has its own gate)")
        if not 0.0 < self.bn_momentum <= 1.0:
            self.fail("bn_momentum", f"must lie in (0, 1], got {self.bn_momentum}")


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
