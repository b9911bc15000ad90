"""Selective copying: copy the data tokens scattered among noise, in order, once the markers ask for them.

Gu & Dao (2023). Mamba: Linear-Time Sequence Modeling with Selective State Spaces. https://arxiv.org/abs/2312.00752
-- §3.1 and Appendix E.1 (Figure 2): the classic copying task (Arjovsky et al. 2016) with the data tokens at random
positions, so that a model must select by content, not by a fixed time offset. The layout follows the generator of
the S4/Mamba authors (``torch_copying_data(L, M, A, variable=True)`` in state-spaces/s4)::

    inputs    0 3 0 0 5 0 2 0 0 0 | 7 7 7        (M = 3 data tokens among L + M positions, then M markers)
    targets   . . . . . . . . . . | 3 5 2        (. = not supervised)

Data tokens are ids ``[1, A - 1)``, noise is ``0`` and the marker ``A - 1``; ``T = L + 2M``. The metric is accuracy
at the marker positions; chance is ``1 / (A - 2)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from edifice_arena.batches import Batch
from edifice_arena.tasks.base import Task

__all__ = ["SelectiveCopying"]


@dataclasses.dataclass(kw_only=True)
class SelectiveCopying(Task):
    """Mamba's selective copying: ``num_tokens`` data tokens at random positions, reproduced in order at the end."""

    name: ClassVar[str] = "selective_copying"
    summary: ClassVar[str] = "copy the data tokens scattered among noise, in order (Mamba, §3.1)"

    seq_len: int = 64
    num_tokens: int = 8
    """Data tokens M to copy (the last M positions are markers, where they are answered)."""
    vocab: int = 16
    """Alphabet size A: noise ``0``, data ``[1, A - 1)``, marker ``A - 1`` (the paper uses 16)."""

    def _vocab_size(self) -> int:
        return self.vocab

    def validate(self) -> None:
        """The tokens and their markers fit in the sequence; at least one data id besides noise and marker."""
        self._check_positive("num_tokens", "vocab")
        if 2 * self.num_tokens > self.seq_len:
            self._fail("num_tokens", self.num_tokens, f"needs seq_len >= 2 * num_tokens, got {self.seq_len}")
        if self.vocab < 3:
            self._fail("vocab", self.vocab, "must be at least 3 (noise, one data id, marker)")

    @property
    def chance(self) -> float:
        """A uniform guess among the data ids."""
        return 1.0 / (self.vocab - 2)

    def sample(self, batch_size: int, generator: torch.Generator, *, split: str = "train") -> Batch:
        """Data tokens at sorted random positions of the first ``T - M``, then ``M`` markers answered in order."""
        B, T, M, A = batch_size, self.seq_len, self.num_tokens, self.vocab
        region = T - M
        tokens = torch.randint(1, A - 1, (B, M), generator=generator)
        positions = torch.rand(B, region, generator=generator).topk(M, dim=1, largest=False).indices.sort(dim=1).values
        inputs = torch.zeros(B, T, dtype=torch.int64)
        inputs.scatter_(1, positions, tokens)
        inputs[:, region:] = A - 1
        targets = torch.zeros(B, T, dtype=torch.int64)
        targets[:, region:] = tokens
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, region:] = True
        return Batch(inputs, targets, mask)
