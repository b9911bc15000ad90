"""Induction heads: after ``... S x ... S``, predict ``x`` -- the token that followed the earlier trigger.

Olsson et al. (2022). In-context Learning and Induction Heads. https://arxiv.org/abs/2209.11895 (the mechanism);
as a synthetic task: Fu, Dao et al. (2023), Hungry Hungry Hippos, §3.1 (https://arxiv.org/abs/2212.14052), and
Gu & Dao (2023), Mamba, §4.1.2 (sequence length 256, vocabulary 16, which are the defaults here)::

    inputs    4 1 9 S 6 2 0 7 3 S
    targets   . . . . . . . . . 6        (. = not supervised)

Random ids ``[0, V - 1)`` fill the sequence; the trigger ``S = V - 1`` appears once at a uniform position in
``[0, T - 3]`` and again at the end, where the answer is read. The metric is accuracy at that last position; chance is
``1 / (V - 1)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from edifice_arena.batches import Batch
from edifice_arena.tasks.base import Task

__all__ = ["InductionHeads"]


@dataclasses.dataclass(kw_only=True)
class InductionHeads(Task):
    """One trigger token and its successor early in the sequence; the trigger again at the end asks for it."""

    name: ClassVar[str] = "induction_heads"
    summary: ClassVar[str] = "after '... S x ... S', predict x (Olsson et al. 2022; H3 §3.1; Mamba §4.1.2)"

    seq_len: int = 256
    vocab: int = 16
    """Vocabulary size V: content ids ``[0, V - 1)`` and the trigger ``V - 1``."""

    def _vocab_size(self) -> int:
        return self.vocab

    def validate(self) -> None:
        """Room for the trigger, its successor and the final trigger; at least two content ids."""
        self._check_positive("vocab")
        if self.seq_len < 4:
            self._fail("seq_len", self.seq_len, "must be at least 4")
        if self.vocab < 3:
            self._fail("vocab", self.vocab, "must be at least 3 (two content ids and the trigger)")

    @property
    def chance(self) -> float:
        """A uniform guess among the content ids."""
        return 1.0 / (self.vocab - 1)

    def sample(self, batch_size: int, generator: torch.Generator, *, split: str = "train") -> Batch:
        """Random content, the trigger at a uniform position in ``[0, T - 3]`` and at ``T - 1``; answer at the end."""
        B, T, V = batch_size, self.seq_len, self.vocab
        trigger = V - 1
        inputs = torch.randint(0, trigger, (B, T), generator=generator)
        first = torch.randint(0, T - 2, (B, 1), generator=generator)
        inputs.scatter_(1, first, trigger)
        inputs[:, -1] = trigger
        targets = torch.zeros(B, T, dtype=torch.int64)
        targets[:, -1] = inputs.gather(1, first + 1).squeeze(1)
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, -1] = True
        return Batch(inputs, targets, mask)
