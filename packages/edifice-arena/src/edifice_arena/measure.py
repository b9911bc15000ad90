"""What an entry costs: training throughput, peak training memory, and decoding through ``step`` (time and state).

* **Throughput** is tokens per second of the training step: the step's input tokens over the *median* step time
  (the Trainer's per-step wall clock, evaluation excluded), so that the first, compiling or allocating, steps and a
  busy neighbour process do not decide it.
* **Peak memory** is the peak of CUDA memory allocated while training (``torch.cuda.max_memory_allocated``). The CPU
  has no allocator statistics to read, so it is not reported there.
* **Decode cost** is the median time of one single-position ``model.step`` after a prefill, batch 1, and the bytes of
  the decoding state it carries -- constant for recurrent and SSM entries, growing with the context for attention
  (measured after a prefill of ``context`` positions, the state preallocated for ``context + steps``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from edifice_arena.training import StepRecord

__all__ = ["DecodeCost", "decode_cost", "peak_memory", "state_bytes", "tokens_per_second"]


@dataclasses.dataclass(frozen=True)
class DecodeCost:
    """Decoding one token through ``step`` at batch 1."""

    ms_per_token: float
    """Median milliseconds of one single-position step."""
    state_bytes: int
    """Bytes of every tensor in the decoding state after a prefill of ``context`` positions."""
    context: int
    """Positions prefilled before the timed steps."""


def tokens_per_second(records: Sequence[StepRecord], tokens_per_step: int, *, skip: int = 2) -> float | None:
    """Training tokens per second over the median step time (the first ``skip`` steps left out when there are more)."""
    seconds = [r.seconds for r in records[skip:] if r.seconds > 0] or [r.seconds for r in records if r.seconds > 0]
    if not seconds:
        return None
    return tokens_per_step / statistics.median(seconds)


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, int | None]]:
    """Measure the peak CUDA memory allocated inside the block into ``result["bytes"]`` (``None`` off CUDA)."""
    result: dict[str, int | None] = {"bytes": None}
    if device.type != "cuda":
        yield result
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    try:
        yield result
    finally:
        torch.cuda.synchronize(device)
        result["bytes"] = int(torch.cuda.max_memory_allocated(device) - baseline)


def state_bytes(state: Any) -> int:
    """Bytes of every tensor in a decoding state (a dataclass or any nesting of them)."""
    leaves = pytree.tree_leaves(state, is_leaf=lambda x: isinstance(x, torch.Tensor))
    seen: set[int] = set()
    total = 0
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
            seen.add(id(leaf))
            total += leaf.numel() * leaf.element_size()
    return total


@torch.no_grad()
def decode_cost(
    model: nn.Module, vocab_size: int, *, context: int, steps: int = 16, device: torch.device | str = "cpu"
) -> DecodeCost | None:
    """Time ``steps`` single-token ``model.step`` calls after a ``context``-token prefill (``None`` if not stateful)."""
    init_state = getattr(model, "init_state", None)
    step = getattr(model, "step", None)
    if init_state is None or step is None:
        return None
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(vocab_size, (1, max(context, 1)), generator=generator).to(device)
        tokens = torch.randint(vocab_size, (1, steps + 2), generator=generator).to(device)
        state = init_state(1, max_len=prompt.shape[1] + tokens.shape[1], device=device)
        _, state = step(prompt, state)
        size = state_bytes(state)
        times = []
        for index in range(tokens.shape[1]):
            _sync(device)
            start = time.perf_counter()
            _, state = step(tokens[:, index : index + 1], state)
            _sync(device)
            times.append(time.perf_counter() - start)
        # The first two steps warm caches and allocators; the median of the rest is the cost.
        return DecodeCost(statistics.median(times[2:]) * 1e3, size, prompt.shape[1])
    finally:
        model.train(was_training)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
