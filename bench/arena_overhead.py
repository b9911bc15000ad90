"""Overhead of an arena run's training step against a bare PyTorch loop over the same model and the same MQAR data.

Run: ``python bench/arena_overhead.py [--device cuda|cpu] [--steps N] [--out DIR]``. Target: the arena adds at most
5% to the step time on the GPU (issue 19).

``bench/train_overhead.py`` measures the Trainer on random token windows; this case measures the step exactly as
``edifice arena`` drives it: the entries of the arena at the ``--suite zoology`` size (MQAR, T = 256, 16 key-value
pairs, vocabulary 8,192, batch 128, d_model 128, two layers, fp32), the batch generated on the host from the task's
seed and the step (Zoology's generator), and the arena's live-progress callback on every step. The bare loop
(``train_overhead.bare_loop``) draws the same batches and does the same work -- forward, masked cross-entropy,
backward, clipping, fused AdamW -- with no host sync and no bookkeeping. Both loops are warmed, then timed over
``--steps`` steps, alternating ``--rounds`` times; the table gives the median ms per step and the overhead.
Results: ``arena_overhead_<device>.{json,md,png}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from harness import Results
from train_overhead import bare_loop, compare

import edifice
from edifice_arena.progress import RichProgress
from edifice_arena.tasks import MQAR
from edifice_arena.training import TrainConfig, Trainer

ENTRIES = ("decoder_only", "gated_delta_net", "mamba_ssd", "lstm")
#: (seq_len, pairs, batch, d_model) per device: Zoology's T = 256 point on a GPU, a small one on the CPU.
SIZES = {"cuda": (256, 16, 128, 128), "cpu": (64, 4, 16, 64)}


def arena_loop(
    model: nn.Module, task: MQAR, batch: int, device: torch.device, total: int
) -> Callable[[int, int], None]:
    """``run(first_step, steps)``: the steps as an arena run takes them (Trainer, task batches, progress callback)."""
    progress = RichProgress(task.metric)
    config = TrainConfig(steps=total, batch_size=batch, lr=1e-3, device=str(device))
    trainer = Trainer(model, task, config, callbacks=[progress.callback("arena", total)])

    def run(first: int, steps: int) -> None:
        assert trainer.completed_steps == first
        trainer.config.steps = first + steps  # fit() stops here; the schedule keeps its own length
        trainer.fit()

    return run


def main() -> None:
    """Measure every entry with both loops and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (default 3)")
    parser.add_argument("--out", default="bench/results", help="output directory")
    args = parser.parse_args()
    device = torch.device(args.device)
    seq_len, pairs, batch, d_model = SIZES[device.type]
    task = MQAR(seq_len=seq_len, num_kv_pairs=pairs, vocab=8192)
    title = "edifice arena's training step vs a bare PyTorch loop, MQAR (ms per step)"
    results = Results(f"arena_overhead_{device.type}", title, ("overhead_pct",))
    total = args.warmup + args.rounds * args.steps
    installed = set(edifice.list_architectures())
    for arch in ENTRIES:
        if arch not in installed:
            print(f"  {arch}: not installed, skipped")
            continue

        def build(name: str = arch) -> nn.Module:
            torch.manual_seed(0)
            return edifice.build(name, d_model=d_model, n_layers=2, vocab_size=task.vocab_size).to(device)

        bare = bare_loop(build(), task, batch, device, None)  # type: ignore[arg-type]  # any BatchSource
        arena = arena_loop(build(), task, batch, device, total)
        bare_ms, arena_ms = compare(bare, arena, args, device)
        shape = f"B={batch} T={seq_len} d={d_model}"
        results.add(arch, "bare PyTorch loop", shape, bare_ms)
        results.add(arch, "edifice arena step", shape, arena_ms, overhead_pct=100 * (arena_ms / bare_ms - 1))
        del bare, arena
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for path in results.write(args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
