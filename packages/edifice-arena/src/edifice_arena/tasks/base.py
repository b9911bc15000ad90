"""What every arena task shares: seeded, indexable batches, a metric over the positions that count, a chance level.

A task is a :class:`~edifice_arena.batches.BatchSource`. Batch ``(split, step, micro_step)`` is drawn from a
generator seeded by a hash of the task's seed and that index, so any batch can be regenerated alone, in any order
(resuming, data parallelism, and the same data for every arena entry all follow). The ``"test"`` split uses its own
seeds, so evaluation batches never repeat training batches by construction of the index.

The metric is computed over the batch's ``mask`` (the positions whose target counts): ``accuracy`` (argmax equals
the target) for the synthetic tasks, ``bits_per_char`` (cross-entropy in bits) for language modelling.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from edifice.errors import ConfigError
from edifice_arena.batches import Batch

__all__ = ["SPLITS", "Metric", "Task"]

Metric = Literal["accuracy", "bits_per_char"]

#: The splits a task draws from; ``"test"`` batches never coincide with ``"train"`` ones.
SPLITS = ("train", "test")


@dataclasses.dataclass(kw_only=True)
class Task(abc.ABC):
    """A synthetic (or shipped-corpus) sequence task: seeded batches, its metric and that metric's chance level."""

    name: ClassVar[str]
    """Registry name (``edifice arena --task NAME``)."""
    metric: ClassVar[Metric] = "accuracy"
    """What :meth:`score` measures on the masked positions."""
    summary: ClassVar[str] = ""
    """One line saying what the model must do."""

    seq_len: int
    """Length T of every sequence."""
    seed: int = 0
    """Seed of the whole stream: every batch is a function of it and the batch's index."""
    vocab_size: int = dataclasses.field(init=False)
    """Number of token ids the model must read and predict (set by each task from its own fields)."""

    def __post_init__(self) -> None:
        self.vocab_size = self._vocab_size()
        self._check_positive("seq_len")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            self._fail("seed", self.seed, "must be a non-negative integer")
        self.validate()

    # -- what a task defines ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _vocab_size(self) -> int:
        """The vocabulary size implied by the task's fields."""

    @abc.abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator, *, split: str = "train") -> Batch:
        """``batch_size`` sequences of ``split`` drawn with ``generator`` (the only source of randomness).

        Synthetic tasks draw both splits from one distribution (the splits differ by their seeds); a corpus task
        reads a different part of its text.
        """

    @property
    @abc.abstractmethod
    def chance(self) -> float:
        """The metric of a model that has learned nothing about the inputs (uniform guessing), for reference."""

    def validate(self) -> None:  # noqa: B027 - optional hook: most tasks have fields to check, parity has none
        """Check the task's own fields (raise :class:`ConfigError` naming the field)."""

    # -- shared machinery ---------------------------------------------------------------------------------------------
    @property
    def higher_is_better(self) -> bool:
        """Accuracy goes up as a model learns; bits per character go down."""
        return self.metric == "accuracy"

    def batch(self, step: int, batch_size: int, *, micro_step: int = 0, split: str = "train") -> Batch:
        """The batch for optimizer step ``step`` and accumulation slice ``micro_step`` of ``split`` (deterministic)."""
        if split not in SPLITS:
            raise ValueError(f"{self.name}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if step < 0 or micro_step < 0 or batch_size < 1:
            raise ValueError(
                f"{self.name}: expected step >= 0, micro_step >= 0 and batch_size >= 1, "
                f"got {step}, {micro_step} and {batch_size}"
            )
        return self.sample(batch_size, self.generator(step, micro_step=micro_step, split=split), split=split)

    def generator(self, step: int, *, micro_step: int = 0, split: str = "train") -> torch.Generator:
        """A CPU generator seeded from the task's seed and the batch index alone (stable across runs and hosts)."""
        key = f"{self.name}/{self.seed}/{split}/{step}/{micro_step}".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # a 63-bit seed
        return torch.Generator().manual_seed(seed)

    def score(self, logits: torch.Tensor, batch: Batch) -> tuple[float, int]:
        """``(total, count)`` of the metric over the masked positions of ``batch`` (``logits`` ``[B, T, vocab]``).

        Accuracy totals the correct predictions; bits per character totals the cross-entropy in bits. Summing both
        parts over batches and dividing gives the metric over a whole evaluation set.
        """
        mask = batch.mask
        count = int(mask.sum())
        if self.metric == "accuracy":
            correct = (logits.argmax(dim=-1) == batch.targets) & mask
            return float(correct.sum()), count
        nats = F.cross_entropy(logits[mask].float(), batch.targets[mask], reduction="sum")
        return float(nats) / math.log(2.0), count

    def describe(self) -> dict[str, Any]:
        """The task's name, fields, metric and chance level (JSON-native, for results files)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {
            "task": self.name,
            **fields,
            "metric": self.metric,
            "chance": self.chance,
            "higher_is_better": self.higher_is_better,
        }

    # -- validation helpers ---------------------------------------------------------------------------------------
    def _fail(self, name: str, value: Any, message: str) -> None:
        raise ConfigError(f"task {self.name}: field '{name}'={value!r} {message}")

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self._fail(name, value, "must be a positive integer")
