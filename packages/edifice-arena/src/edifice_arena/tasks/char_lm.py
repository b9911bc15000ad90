"""Character-level language modelling on a small public-domain corpus shipped inside the package.

The corpus is ``data/tinyshakespeare.txt`` (about 300 KB of Shakespeare, public domain; source and licence in
``data/README.md``). Its distinct characters, sorted, are the vocabulary. Every sequence is a window of ``T + 1``
characters at a uniform random offset: the model reads the first ``T`` and predicts the next character at every
position (all supervised). Windows of the ``"train"`` split lie in the first 90% of the text, those of ``"test"`` in
the last 10%.

The metric is bits per character, ``cross-entropy / ln 2`` (lower is better); chance is a uniform guess over the
vocabulary, ``log2 V`` bits (about 5.95 for the 62 characters of the shipped text).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from importlib import resources
from typing import ClassVar

import torch

from edifice_arena.batches import Batch
from edifice_arena.tasks.base import Metric, Task

__all__ = ["CORPUS", "CharLM", "corpus"]

#: File name of the shipped corpus, inside ``edifice_arena/tasks/data``.
CORPUS = "tinyshakespeare.txt"

#: Fraction of the corpus (its end) held out for the ``"test"`` split.
TEST_FRACTION = 0.1


@functools.cache
def corpus() -> tuple[str, torch.Tensor]:
    """The shipped corpus as ``(alphabet, ids)``: its sorted distinct characters and the text as int64 ids."""
    text = resources.files("edifice_arena.tasks").joinpath("data", CORPUS).read_text(encoding="utf-8")
    alphabet = "".join(sorted(set(text)))
    index = {char: i for i, char in enumerate(alphabet)}
    return alphabet, torch.tensor([index[char] for char in text], dtype=torch.int64)


@dataclasses.dataclass(kw_only=True)
class CharLM(Task):
    """Next-character prediction on the shipped Shakespeare corpus, scored in bits per character."""

    name: ClassVar[str] = "char_lm"
    metric: ClassVar[Metric] = "bits_per_char"
    summary: ClassVar[str] = "next-character prediction on ~300 KB of Shakespeare (public domain), in bits per char"

    seq_len: int = 128

    def _vocab_size(self) -> int:
        return len(corpus()[0])

    def validate(self) -> None:
        """A window must fit in the held-out split."""
        test_chars = int(len(corpus()[1]) * TEST_FRACTION)
        if self.seq_len + 1 > test_chars:
            self._fail("seq_len", self.seq_len, f"must be below the {test_chars} characters of the test split")

    @property
    def chance(self) -> float:
        """Bits per character of a uniform guess over the vocabulary."""
        return math.log2(self.vocab_size)

    def sample(self, batch_size: int, generator: torch.Generator, *, split: str = "train") -> Batch:
        """Windows of ``split``'s part of the text, at offsets drawn with ``generator``."""
        ids = corpus()[1]
        boundary = len(ids) - int(len(ids) * TEST_FRACTION)
        text = ids[:boundary] if split == "train" else ids[boundary:]
        starts = torch.randint(0, len(text) - self.seq_len, (batch_size, 1), generator=generator)
        windows = text[starts + torch.arange(self.seq_len + 1)]  # (B, T + 1)
        inputs, targets = windows[:, :-1], windows[:, 1:]
        return Batch(inputs.contiguous(), targets.contiguous(), torch.ones_like(inputs, dtype=torch.bool))
