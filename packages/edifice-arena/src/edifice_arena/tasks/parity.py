"""Running parity: read a stream of bits and say, at every position, whether an odd number of ones has been seen.

The simplest state-tracking problem (the group Z_2): a recurrence with a sign flip solves it exactly at any length,
while linear recurrences whose transitions have only positive eigenvalues (Mamba, Gated DeltaNet with β in (0, 1))
provably cannot -- Grazzi, Siems, Franke, Zela, Hutter & Pontil (2024). Unlocking State-Tracking in Linear RNNs
Through Negative Eigenvalues. https://arxiv.org/abs/2411.12537 (§4, Theorem 1; parity is their Table 2 task). It is
the counterpart of MQAR: there, the LSTM loses; here, it wins::

    inputs    1 0 1 1 0 0 1
    targets   1 1 0 1 1 1 0        (every position is supervised)

Bits are uniform; the metric is accuracy over every position; chance is ``1 / 2``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from edifice_arena.batches import Batch
from edifice_arena.tasks.base import Task

__all__ = ["Parity"]


@dataclasses.dataclass(kw_only=True)
class Parity(Task):
    """Prefix parity of a random bit string, predicted at every position."""

    name: ClassVar[str] = "parity"
    summary: ClassVar[str] = "running parity of a bit stream at every position (state tracking; Grazzi et al. 2024)"

    seq_len: int = 64

    def _vocab_size(self) -> int:
        return 2

    @property
    def chance(self) -> float:
        """A coin flip."""
        return 0.5

    def sample(self, batch_size: int, generator: torch.Generator, *, split: str = "train") -> Batch:
        """Uniform bits; the target at ``t`` is their sum over ``[0, t]`` modulo 2."""
        inputs = torch.randint(0, 2, (batch_size, self.seq_len), generator=generator)
        targets = inputs.cumsum(dim=1) % 2
        return Batch(inputs, targets, torch.ones_like(inputs, dtype=torch.bool))
