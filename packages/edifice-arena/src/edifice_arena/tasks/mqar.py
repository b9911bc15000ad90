"""Multi-query associative recall (MQAR), as the Zoology study defines it (Arora, Eyuboglu et al. 2023).

Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra & Ré (2023). Zoology: Measuring and Improving Recall in
Efficient Language Models. https://arxiv.org/abs/2312.04927 -- §3.1 defines the task; the layout below follows the
authors' generator (``zoology/data/multiquery_ar.py`` in HazyResearch/zoology) position for position::

                 key val key val            query                        query
    inputs       2   8   4   7   0   0   4   0   0   0   0   0   2   0   0
    targets      .   .   .   .   .   .   7   .   .   .   .   .   8   .   .      (. = not supervised)

* keys are ``num_kv_pairs`` distinct ids from ``[1, V/2)``, values distinct ids from ``[V/2, V)``;
* the ``2 * num_kv_pairs`` context tokens come first; the rest of the sequence holds each key once more as a query,
  at even offsets ``2 * gap`` into the query region, the ``gap`` drawn without replacement from a power law
  ``p(g) ∝ a g^(a-1)`` (``power_a = 0.01`` favours queries soon after the context, as bigrams repeat in text);
* only the query positions are supervised, with the value bound to the key (the model predicts it *at* the query);
* every other position is ``0`` (Zoology's Figure 2 sweep, ``random_non_queries=False``) or, with
  ``random_non_queries=True`` (the generator's default), a uniform random id.

Zoology asserts ``V > T``; so does this task. The metric is accuracy over the queries. Chance is a uniform guess
among the value ids, ``1 / (V - V/2)``; a model that has only learned to answer *some value seen in context* sits at
``1 / num_kv_pairs`` -- the plateau to watch for.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from edifice_arena.batches import Batch
from edifice_arena.tasks.base import Task

__all__ = ["MQAR"]


@dataclasses.dataclass(kw_only=True)
class MQAR(Task):
    """Zoology's MQAR: bind ``num_kv_pairs`` keys to values, then answer each key when it is queried again."""

    name: ClassVar[str] = "mqar"
    summary: ClassVar[str] = "recall the value bound to each key when the key is queried again (Zoology, §3.1)"

    seq_len: int = 64
    num_kv_pairs: int = 4
    """Key-value pairs per sequence (each key queried exactly once)."""
    vocab: int = 8192
    """Vocabulary size V: keys come from ``[1, V/2)``, values from ``[V/2, V)`` (Zoology uses 8,192)."""
    power_a: float = 0.01
    """Exponent ``a`` of the power law placing the queries (1.0 is uniform)."""
    random_non_queries: bool = False
    """Fill non-query positions with random ids instead of 0 (Zoology's generator default; Figure 2 used False)."""

    def _vocab_size(self) -> int:
        return self.vocab

    def validate(self) -> None:
        """Zoology's constraints: even T, ``V > T``, the context and the queries fit, enough distinct keys."""
        self._check_positive("num_kv_pairs", "vocab")
        if self.seq_len % 2:
            self._fail("seq_len", self.seq_len, "must be even (queries sit at even offsets)")
        if self.vocab <= self.seq_len:
            self._fail("vocab", self.vocab, f"must exceed seq_len={self.seq_len} (as Zoology requires)")
        if 4 * self.num_kv_pairs > self.seq_len:
            self._fail("num_kv_pairs", self.num_kv_pairs, f"needs seq_len >= 4 * num_kv_pairs, got {self.seq_len}")
        if self.num_kv_pairs > self.vocab // 2 - 1:
            self._fail("num_kv_pairs", self.num_kv_pairs, f"exceeds the {self.vocab // 2 - 1} distinct keys")
        if not 0.0 < self.power_a <= 1.0:
            self._fail("power_a", self.power_a, "must be in (0, 1]")

    @property
    def chance(self) -> float:
        """A uniform guess among the value ids."""
        return 1.0 / (self.vocab - self.vocab // 2)

    def sample(self, batch_size: int, generator: torch.Generator, *, split: str = "train") -> Batch:
        """Zoology's layout: context ``k v k v ...``, then each key once at an even, power-law-placed offset."""
        B, T, n, V = batch_size, self.seq_len, self.num_kv_pairs, self.vocab
        context = 2 * n
        half = V // 2

        def distinct(low: int, high: int) -> torch.Tensor:
            # n distinct ids from [low, high) per row, in random order: the positions of the n smallest of
            # iid uniforms (B, n) -- the head of a random permutation, by an O(V) top-k instead of a full sort.
            scores = torch.rand(B, high - low, generator=generator)
            return scores.topk(n, dim=1, largest=False).indices + low

        keys, values = distinct(1, half), distinct(half, V)

        # Query gaps g in [0, space), distinct per row, p(g) ∝ a (g + 1)^(a - 1) as in the authors' generator.
        space = (T - context) // 2
        offsets = torch.arange(1, space + 1, dtype=torch.float64)
        weights = (self.power_a * offsets ** (self.power_a - 1)).expand(B, space)
        gaps = torch.multinomial(weights, n, replacement=False, generator=generator)  # (B, n)

        inputs = torch.zeros(B, T, dtype=torch.int64)
        inputs[:, 0:context:2] = keys
        inputs[:, 1:context:2] = values
        query_positions = context + 2 * gaps  # (B, n): the model answers at the query token itself
        inputs.scatter_(1, query_positions, keys)
        targets = torch.zeros(B, T, dtype=torch.int64)
        targets.scatter_(1, query_positions, values)
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask.scatter_(1, query_positions, True)
        if self.random_non_queries:
            filler = torch.randint(V, (B, T), generator=generator)
            filler_positions = inputs == 0
            inputs[filler_positions] = filler[filler_positions]
        return Batch(inputs, targets, mask)
