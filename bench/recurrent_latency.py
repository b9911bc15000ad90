"""Latency of the recurrent entries (lstm, gru, min_gru, min_lstm) beside torch.nn.LSTM/GRU, full sequence and step.

Run: ``python bench/recurrent_latency.py [--device cpu|cuda|all] [--dtype float32|float16|bfloat16] [--out DIR]``.
Shapes: 2 layers, d_model 256, T = 32, batch 1 and 32, fp32 unless ``--dtype``, eval mode under
``torch.inference_mode``. "full" is one forward over T positions; "step" is one decoding step (one position, after a
T-position prefill) through the model's ``step``, which updates its state in place. On the CPU: median wall-clock
times. On CUDA: eager times (CUDA events; launch-bound at these sizes, so they measure Python and kernel launches)
and the replay latency of the same call captured in a CUDA graph (the deployment setting of a 60 frames/s agent;
``step`` must be capturable). min_gru/min_lstm run mixer-only blocks (``d_ff=0``) so every row does comparable work.
Results: ``recurrent_<device>[_<dtype>].{json,md,png}`` under ``--out`` (a dtype suffix for half precision).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from harness import Results, cpu_ms, gpu_ms, graph_ms

import edifice

D_MODEL, N_LAYERS, T = 256, 2, 32
ENTRIES: dict[str, dict[str, int]] = {"lstm": {}, "gru": {}, "min_gru": {"d_ff": 0}, "min_lstm": {"d_ff": 0}}
BATCHES = (1, 32)
#: The references, cuDNN on a GPU: one multi-layer call each.
TORCH_RNNS: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"torch.nn.LSTM": nn.LSTM, "torch.nn.GRU": nn.GRU}


def calls(
    name: str, batch: int, device: torch.device, dtype: torch.dtype
) -> tuple[Callable[[], object], Callable[[], object]]:
    """The full-sequence call and the one-position ``step`` call (after a prefill) of one entry or of nn.LSTM."""
    x = torch.randn(batch, T, D_MODEL, device=device, dtype=dtype)
    token = x[:, :1].clone()
    if name in TORCH_RNNS:
        rnn = TORCH_RNNS[name](D_MODEL, D_MODEL, num_layers=N_LAYERS, batch_first=True).to(device, dtype).eval()
        _, hx = rnn(x)
        carried = hx if isinstance(hx, tuple) else (hx,)  # (h, c) of an LSTM, (h,) of a GRU

        def rnn_step() -> None:  # one position from the carried state, written back in place
            _, new = rnn(token, hx)
            for old, value in zip(carried, new if isinstance(new, tuple) else (new,), strict=True):
                old.copy_(value)

        return (lambda: rnn(x)), rnn_step
    model = edifice.build(name, d_model=D_MODEL, n_layers=N_LAYERS, device=device, dtype=dtype, **ENTRIES[name])
    model.eval()
    state = model.init_state(batch)
    model.step(x, state)  # prefill
    return (lambda: model(x=x)), (lambda: model.step(token, state))


def bench(device: torch.device, out: Path, dtype: torch.dtype = torch.float32) -> Results:
    """Measure every entry at both batch sizes on ``device`` in ``dtype``."""
    label = str(dtype).removeprefix("torch.")
    suffix = "" if dtype == torch.float32 else f"_{label}"
    title = f"Recurrent latency, {N_LAYERS} layers, d_model {D_MODEL}, T {T}, {label}"
    results = Results(f"recurrent_{device.type}{suffix}", title)
    names = [*ENTRIES, *TORCH_RNNS]
    with torch.inference_mode():
        for batch in BATCHES:
            shape = f"B={batch}"
            for name in names:
                torch.manual_seed(0)
                full, step = calls(name, batch, device, dtype)
                if device.type == "cpu":
                    results.add("full sequence", name, shape, cpu_ms(full, repeats=50, warmup=20))
                    results.add("step", name, shape, cpu_ms(step, repeats=200, warmup=50))
                    continue
                for what, fn in (("full sequence", full), ("step", step)):
                    eager = gpu_ms(fn, warmup_ms=20, rep_ms=100)
                    try:
                        graph: float | str = round(graph_ms(fn), 4)
                    except Exception as exc:  # a call that cannot be captured is a finding, not a crash
                        graph = f"not capturable: {type(exc).__name__}"
                    results.add(what, name, shape, eager, cuda_graph_ms=graph)
    results.write(out)
    return results


def main() -> None:
    """Run on the chosen devices and write tables and plots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="all", choices=("cpu", "cuda", "all"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    parser.add_argument("--out", default="bench-results", help="folder for the .json/.md/.png results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: skipping the GPU part")
            continue
        bench(torch.device(device), Path(args.out), getattr(torch, args.dtype))


if __name__ == "__main__":
    main()
