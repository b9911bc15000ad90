"""Config and spec of ``multi_timescale_recurrence``: FTW's temporal hierarchy of fast and slow cores (torch-free).

The model is :class:`edifice_recurrent.multi_timescale_recurrence.MultiTimescaleRecurrence`; its equations are in
``docs/design/multi_timescale_recurrence.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["FTW", "SPECS", "MultiTimescaleConfig"]


@dataclasses.dataclass(kw_only=True)
class MultiTimescaleConfig(SequenceConfig):
    """A fast core stepping every position, conditioned on slow cores that update every ``scales[k]`` positions."""

    arch: str = field("multi_timescale_recurrence", "Registry name of the architecture this config builds.")
    d_model: int = field(256, "Width of every core and of the output (FTW's hidden size; alias output_size).")
    n_layers: int = field(1, "Number of stacked hierarchies (each reads the previous one's fast-core output).")
    scales: tuple[int, ...] = field(
        (1, 4, 16), "Update period of each core, fastest first: 1 (the fast core), then increasing slow periods."
    )
    cell_type: Literal["lstm", "gru"] = field("lstm", "Cell of every core: 'lstm' (FTW) or 'gru'.")
    bias: bool = field(True, "Input and recurrent biases in every gate.")

    aliases: ClassVar[Mapping[str, str]] = {**SequenceConfig.aliases, "output_size": "d_model"}

    def validate(self) -> None:
        """Check the scales: at least two, the first 1, strictly increasing; and the cell type."""
        super().validate()
        self.check_choice("cell_type", ("lstm", "gru"))
        if len(self.scales) < 2:
            self.fail("scales", "needs at least two periods: the fast core's 1 and one slow core's, e.g. (1, 8)")
        if self.scales[0] != 1:
            self.fail("scales", "must start with 1: the fast core steps at every position (e.g. (1, 4, 16))")
        if any(b <= a for a, b in itertools.pairwise(self.scales)):
            self.fail("scales", "must be strictly increasing (each slow core slower than the one below)")


FTW = Paper(
    "Human-level performance in 3D multiplayer games with population-based reinforcement learning",
    "Jaderberg et al.",
    2019,
    "1807.01281",
)

SPECS = (
    ArchSpec(
        name="multi_timescale_recurrence",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="FTW's temporal hierarchy: slow LSTMs update every tau steps, read the fast core, condition it.",
        paper=FTW,
        config="edifice_recurrent.configs.multi_timescale_recurrence:MultiTimescaleConfig",
        model="edifice_recurrent.multi_timescale_recurrence:MultiTimescaleRecurrence",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "d_in": 8, "scales": (1, 2, 4)},
        verification="property:slow cores' states change only at their ticks (t mod scales[k] = 0) and match an fp64 "
        "loop of docs/design/multi_timescale_recurrence.md eqs. 1-4",
        causal=True,
        stateful=True,
        variable_length=True,
        # The fast core runs each window between slow ticks as one fused torch.nn.LSTM call; Dynamo graph-breaks on it.
        compile_fullgraph=False,
        reasons={
            "no_compile_fullgraph": "Dynamo does not trace torch.nn.LSTM/GRU (graph break; its allow_rnn is "
            "experimental)"
        },
    ),
)
