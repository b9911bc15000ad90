"""What a training loop consumes: token batches with the positions that count, from a seeded, indexable source.

A :class:`BatchSource` is indexed by ``(step, micro_step)`` and derives its randomness from its seed and that index
alone, never from a running generator. Two properties follow that the trainer relies on: a run resumed at step ``s``
sees exactly the batches an uninterrupted run sees, and with data parallelism each rank takes its rows of the same
global batch (:meth:`Batch.shard`), so N processes see the data one process would.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Batch", "BatchSource"]


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of token sequences: ``inputs``/``targets`` ``[B, T]`` int64, ``mask`` ``[B, T]`` bool.

    ``mask`` marks the positions whose target counts in the loss and the metric (all of them for language modelling;
    the answers only for recall tasks).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.inputs.dim() != 2 or self.targets.shape != self.inputs.shape or self.mask.shape != self.inputs.shape:
            raise ValueError(
                f"Batch: inputs, targets and mask must share one shape [B, T], got {tuple(self.inputs.shape)}, "
                f"{tuple(self.targets.shape)} and {tuple(self.mask.shape)}"
            )
        if self.mask.dtype != torch.bool:
            raise TypeError(f"Batch: mask must be torch.bool, got {self.mask.dtype}")

    @property
    def size(self) -> int:
        """Number of sequences (rows)."""
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``."""
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))

    def shard(self, index: int, count: int) -> Batch:
        """Contiguous rows: rank ``index`` of ``count`` takes its share of the batch."""
        if not 0 <= index < count or self.size % count:
            raise ValueError(f"Batch.shard: cannot split {self.size} rows into {count} equal shards (index {index})")
        rows = slice(index * self.size // count, (index + 1) * self.size // count)
        return Batch(self.inputs[rows], self.targets[rows], self.mask[rows])


@runtime_checkable
class BatchSource(Protocol):
    """A seeded, indexable stream of batches (tasks and text corpora both implement it)."""

    vocab_size: int
    seq_len: int

    def batch(self, step: int, batch_size: int, *, micro_step: int = 0, split: str = "train") -> Batch:
        """The batch for optimizer step ``step`` and gradient-accumulation slice ``micro_step`` (deterministic)."""
        ...
