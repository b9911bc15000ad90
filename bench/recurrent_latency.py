"""CPU latency of the recurrent entries (lstm, gru, min_gru, min_lstm) beside torch.nn.LSTM, full sequence and per step.

Run: ``.venv/bin/python bench/recurrent_latency.py [--threads N] [--repeats R]``. Shapes: 2 layers, d_model 256,
T = 32, batch 1 and 32, fp32, eval mode under ``torch.inference_mode``. "full" is one forward over T positions;
"step" is one decoding step (one position, after a T-position prefill) through the model's ``step``. Medians of
wall-clock time in milliseconds. min_gru/min_lstm run mixer-only blocks (``d_ff=0``) so all rows have comparable
work. (The GPU part -- CUDA events, CUDA graphs, cuDNN -- comes later.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import edifice

D_MODEL, N_LAYERS, T = 256, 2, 32
ENTRIES: dict[str, dict[str, int]] = {"lstm": {}, "gru": {}, "min_gru": {"d_ff": 0}, "min_lstm": {"d_ff": 0}}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_entry(name: str, batch: int, repeats: int) -> tuple[int, float, float]:
    """Parameters, full-sequence ms and per-step ms of an Edifice entry."""
    model = edifice.build(name, d_model=D_MODEL, n_layers=N_LAYERS, **ENTRIES[name]).eval()
    x = torch.randn(batch, T, D_MODEL)
    full = median_ms(lambda: model(x=x), repeats)
    state = model.init_state(batch)
    model.step(x, state)  # prefill
    token = x[:, :1]
    step = median_ms(lambda: model.step(token, state), repeats)
    return sum(p.numel() for p in model.parameters()), full, step


def bench_torch_lstm(batch: int, repeats: int) -> tuple[int, float, float]:
    """The same numbers for a plain ``torch.nn.LSTM`` (per step: one call with the carried ``(h, c)``)."""
    lstm = nn.LSTM(D_MODEL, D_MODEL, num_layers=N_LAYERS, batch_first=True).eval()
    x = torch.randn(batch, T, D_MODEL)
    full = median_ms(lambda: lstm(x), repeats)
    _, hx = lstm(x)
    token = x[:, :1]
    step = median_ms(lambda: lstm(token, hx), repeats)
    return sum(p.numel() for p in lstm.parameters()), full, step


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per measurement")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {N_LAYERS} layers, d_model {D_MODEL}, T {T}")
    print(f"| {'model':<15} | {'params':>8} | {'batch':>5} | {'full ms':>8} | {'step ms':>8} |")
    print(f"|{'-' * 17}|{'-' * 10}:|{'-' * 6}:|{'-' * 9}:|{'-' * 9}:|")
    with torch.inference_mode():
        for batch in (1, 32):
            rows = [(name, *bench_entry(name, batch, args.repeats)) for name in ENTRIES]
            rows.append(("torch.nn.LSTM", *bench_torch_lstm(batch, args.repeats)))
            for name, params, full, step in rows:
                print(f"| {name:<15} | {params:>8} | {batch:>5} | {full:>8.3f} | {step:>8.3f} |")


if __name__ == "__main__":
    main()
