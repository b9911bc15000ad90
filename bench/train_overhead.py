"""What the arena's training loop (``edifice_arena.training.Trainer``) adds to a bare PyTorch loop's step time.

Run: ``python bench/train_overhead.py [--device cuda|cpu] [--steps N] [--quick] [--out DIR]``.

Both loops train the same model (same seed, same initial weights) on the same batches (random windows of a random
token stream, drawn on the host each step) with the same work per step: forward under autocast (bf16 on CUDA),
masked cross-entropy in fp32, backward, gradient clipping to 1.0, fused AdamW. The bare loop is the fastest honest
PyTorch loop: it never reads the loss back (no host sync). The Trainer adds what it is for -- two weight-decay
groups, the learning-rate schedule, the loss of every step copied back one step late, the per-step record and
callback -- and must stay within 5% of the bare loop (issue 19). Each case warms both loops, then times ``--steps``
steps of each, alternating three times; the table reports the median ms per step and the overhead.

Cases: a launch-bound small transformer (where host overhead would show first) and two mid-sized models (a
transformer and Gated DeltaNet). Results: ``train_overhead_<device>.{json,md,png}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from harness import Results

import edifice
from edifice_arena.corpus import TokenWindows
from edifice_arena.training import TrainConfig, Trainer

VOCAB = 8192
#: (case name, architecture, config overrides, T, batch)
CASES: list[tuple[str, str, dict[str, int], int, int]] = [
    ("small transformer (launch-bound)", "decoder_only", {"d_model": 128, "n_layers": 2, "n_heads": 4}, 128, 16),
    ("transformer 8x512", "decoder_only", {"d_model": 512, "n_layers": 8, "n_heads": 8}, 512, 16),
    ("gated_delta_net 8x512", "gated_delta_net", {"d_model": 512, "n_layers": 8, "n_heads": 4}, 512, 16),
]
QUICK: list[tuple[str, str, dict[str, int], int, int]] = [
    ("tiny transformer", "decoder_only", {"d_model": 32, "n_layers": 1, "n_heads": 2}, 32, 4),
]


def build(arch: str, overrides: dict[str, int], device: torch.device) -> nn.Module:
    """The case's model, with the same initial weights every call."""
    torch.manual_seed(0)
    return edifice.build(arch, vocab_size=VOCAB, **overrides).to(device)


def bare_loop(
    model: nn.Module, source: TokenWindows, batch: int, device: torch.device, precision: torch.dtype | None
) -> Callable[[int, int], None]:
    """``run(first_step, steps)``: the plain PyTorch training loop, no host sync."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda" or None
    )

    def run(first: int, steps: int) -> None:
        for step in range(first, first + steps):
            data = source.batch(step, batch)
            pin = device.type == "cuda"
            inputs, targets, mask = (
                (t.pin_memory() if pin else t).to(device, non_blocking=True)
                for t in (data.inputs, data.targets, data.mask)
            )
            with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
                logits = model(input_ids=inputs)
            labels = targets.masked_fill(~mask, -100).flatten()
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels, ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def arena_loop(
    model: nn.Module, source: TokenWindows, batch: int, device: torch.device, total_steps: int, precision: str
) -> Callable[[int, int], None]:
    """``run(first_step, steps)``: the same steps through :class:`Trainer` (records, callback, lazy loss)."""
    config = TrainConfig(steps=total_steps, batch_size=batch, lr=1e-3, precision=precision, device=str(device))
    seen: list[float] = []
    trainer = Trainer(model, source, config, callbacks=[lambda record: seen.append(record.loss)])

    def run(first: int, steps: int) -> None:
        assert trainer.completed_steps == first
        trainer.config.steps = first + steps  # fit() stops here; the schedule keeps its own length
        trainer.fit()

    return run


def timed(run: Callable[[int, int], None], first: int, steps: int, device: torch.device) -> float:
    """Milliseconds per step of ``steps`` steps from ``first``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(first, steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / steps


def compare(
    bare: Callable[[int, int], None], loop: Callable[[int, int], None], args: argparse.Namespace, device: torch.device
) -> tuple[float, float]:
    """Median ms per step of ``bare`` and ``loop`` over ``args.rounds`` alternating rounds, after warming both."""
    for run in (bare, loop):
        timed(run, 0, args.warmup, device)
    times: tuple[list[float], list[float]] = ([], [])
    for round_index in range(args.rounds):
        first = args.warmup + round_index * args.steps
        for run, measured in zip((bare, loop), times, strict=True):
            measured.append(timed(run, first, args.steps, device))
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    """Measure every case and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="a tiny case only (a smoke run on the CPU)")
    parser.add_argument("--out", default="bench/results", help="output directory")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = torch.bfloat16 if cuda else None
    results = Results(f"train_overhead_{device.type}", "edifice_arena Trainer vs a bare PyTorch loop (ms per step)")
    total = args.warmup + args.rounds * args.steps
    for name, arch, overrides, seq_len, batch in QUICK if args.quick else CASES:
        stream = np.random.default_rng(0).integers(0, VOCAB, size=1_000_000, dtype=np.int64).astype(np.uint16)
        source = TokenWindows(stream, VOCAB, seq_len, seed=0, name="random tokens")
        bare = bare_loop(build(arch, overrides, device), source, batch, device, precision)
        arena = arena_loop(build(arch, overrides, device), source, batch, device, total, "bf16" if cuda else "fp32")
        bare_ms, arena_ms = compare(bare, arena, args, device)
        shape = f"B={batch} T={seq_len}"
        results.add(name, "bare PyTorch loop", shape, bare_ms)
        results.add(name, "edifice_arena Trainer", shape, arena_ms, overhead_pct=100 * (arena_ms / bare_ms - 1))
        del bare, arena
        if cuda:
            torch.cuda.empty_cache()
    for path in results.write(args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
