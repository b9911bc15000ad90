"""The one benchmark harness (DESIGN §10): timers, peak memory, progress, and results as JSON, Markdown and PNG.

Every case measures its rows side by side in one process, on the same inputs, after warming every shape:

* :func:`gpu_ms` -- the median of ``triton.testing.do_bench`` (which flushes the L2 cache between runs) on CUDA, or
  of CUDA-event timings when Triton is missing;
* :func:`cpu_ms` -- the median wall-clock time on the CPU;
* :func:`graph_ms` -- the median latency of one replay of ``fn`` captured in a CUDA graph (small, launch-bound
  cases, where eager timing mostly measures Python and kernel launches);
* :func:`peak_mib` -- the peak CUDA memory ``fn`` allocates above what was allocated before it ran.

:class:`Results` collects rows, prints each as it is measured (the progress of a long run) and writes
``<name>.json``, ``<name>.md`` (a table with the machine and versions) and, where matplotlib is installed,
``<name>.png`` (one bar group per shape).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["Results", "Row", "cpu_ms", "environment", "gpu_ms", "graph_ms", "peak_mib"]


def cpu_ms(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def gpu_ms(
    fn: Callable[[], object], *, warmup_ms: float = 25.0, rep_ms: float = 100.0, slow_ms: float = 1000.0
) -> float:
    """Median CUDA milliseconds of ``fn()``: ``triton.testing.do_bench`` when available, else CUDA events.

    A call slower than ``slow_ms`` (a sequential scan over thousands of steps) is timed once more after the first
    (warm-up) call instead: do_bench's five-call estimate plus its warm-up would spend a minute on it for nothing.
    """
    first = _event_ms(fn, repeats=1, warmup=0)
    if first > slow_ms:
        return _event_ms(fn, repeats=1, warmup=0)
    try:
        from triton.testing import do_bench
    except ImportError:
        return _event_ms(fn, repeats=max(5, int(rep_ms)))
    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def _event_ms(fn: Callable[[], object], *, repeats: int, warmup: int = 3) -> float:
    """Median of CUDA-event timings of ``fn()`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def graph_ms(fn: Callable[[], object], *, replays: int = 200) -> float:
    """Median milliseconds of one replay of ``fn`` captured in a CUDA graph (``fn`` must be capturable).

    ``fn`` runs three times on a side stream first (cuDNN/cuBLAS workspaces, lazy initialisation), as PyTorch's
    CUDA-graph guide prescribes; each replay is timed alone with CUDA events.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _event_ms(graph.replay, repeats=replays)


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory (MiB) allocated while ``fn()`` runs, above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def environment() -> dict[str, str]:
    """The machine and versions a result was measured on."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu": _cpu_name()}
    env["threads"] = str(torch.get_num_threads())
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = str(torch.version.cuda)
    for package in ("transformers", "triton"):
        with contextlib.suppress(ImportError):
            env[package] = __import__(package).__version__
    return env


def _cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@dataclasses.dataclass
class Row:
    """One measurement: what ran (``impl``) on which case and shape, its time, and optional extras."""

    case: str
    impl: str
    shape: str
    ms: float
    extra: dict[str, float | str] = dataclasses.field(default_factory=dict)


class Results:
    """Rows of one benchmark: printed as they come, written as ``<name>.json``, ``.md`` and ``.png``."""

    def __init__(self, name: str, title: str, columns: tuple[str, ...] = ()) -> None:
        self.name, self.title, self.columns = name, title, columns
        self.rows: list[Row] = []
        self.env = environment()
        print(f"# {title}\n# " + ", ".join(f"{k} {v}" for k, v in self.env.items()), flush=True)

    def add(self, case: str, impl: str, shape: str, ms: float, **extra: float | str) -> Row:
        """Record (and print) one measurement."""
        row = Row(case, impl, shape, ms, dict(extra))
        self.rows.append(row)
        extras = "  ".join(f"{k}={_fmt(v)}" for k, v in extra.items())
        print(f"  {case:<28} {impl:<34} {shape:<26} {ms:10.3f} ms  {extras}", flush=True)
        return row

    def ratio(self, case: str, shape: str, numerator: str, denominator: str) -> float:
        """``ms(numerator) / ms(denominator)`` for one case and shape (how many times faster the denominator is)."""
        by_impl = {r.impl: r.ms for r in self.rows if r.case == case and r.shape == shape}
        return by_impl[numerator] / by_impl[denominator]

    def markdown(self) -> str:
        """The results as a Markdown table, headed by the environment."""
        keys = list(self.columns) or sorted({k for r in self.rows for k in r.extra})
        lines = [f"### {self.title}", "", "Measured on: " + ", ".join(f"{k} {v}" for k, v in self.env.items()), ""]
        lines.append("| " + " | ".join(["case", "implementation", "shape", "ms", *keys]) + " |")
        lines.append("|---|---|---|---:|" + "---:|" * len(keys))
        for r in self.rows:
            cells = [r.case, r.impl, r.shape, f"{r.ms:.3f}", *(_fmt(r.extra.get(k, "")) for k in keys)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``<name>.json``, ``<name>.md`` and (with matplotlib) ``<name>.png`` under ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "title": self.title,
            "env": self.env,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }
        paths = [out / f"{self.name}.json", out / f"{self.name}.md"]
        paths[0].write_text(json.dumps(payload, indent=1))
        paths[1].write_text(self.markdown())
        png = self._plot(out / f"{self.name}.png")
        return paths + ([png] if png else [])

    @classmethod
    def from_json(cls, path: str | Path) -> Results:
        """The results a run wrote to ``<name>.json``, to re-render their table and plot without measuring again."""
        payload = json.loads(Path(path).read_text())
        results = cls.__new__(cls)
        results.name, results.title, results.columns = Path(path).stem, payload["title"], ()
        results.env = payload["env"]
        results.rows = [Row(**row) for row in payload["rows"]]
        return results

    def _plot(self, path: Path) -> Path | None:
        """Grouped bars of ms per (case, shape), one bar per implementation; None without matplotlib.

        Every other timing column (an extra named ``*_ms``, e.g. ``cuda_graph_ms``) gets a panel of its own beside
        the first, on the same scale. Rows without a number there (an error, out of memory) have no bar.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        timings = ["ms", *sorted({k for r in self.rows for k in r.extra if k.endswith("_ms")})]
        groups = list(dict.fromkeys((r.case, r.shape) for r in self.rows))
        impls = list(dict.fromkeys(r.impl for r in self.rows))
        width = 0.8 / len(impls)
        fig, axes = plt.subplots(
            1, len(timings), figsize=(max(6.0, 1.6 * len(groups)) * len(timings), 4.0), sharey=True, squeeze=False
        )
        for ax, timing in zip(axes[0], timings, strict=True):
            for i, impl in enumerate(impls):
                values = {(r.case, r.shape): _timing(r, timing) for r in self.rows if r.impl == impl}
                keys = [key for key in groups if values.get(key) is not None]
                ax.bar(
                    [groups.index(key) + i * width for key in keys], [values[key] for key in keys], width, label=impl
                )
            ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
            ax.set_xticklabels([f"{c}\n{s}" for c, s in groups], fontsize=7)
            ax.set_yscale("log")
            ax.set_title("eager" if timing == "ms" else timing.removesuffix("_ms").replace("_", " "), fontsize=8)
        axes[0][0].set_ylabel("milliseconds (log scale; lower is better)")
        axes[0][-1].legend(fontsize=7)
        device = self.env.get("gpu", self.env["cpu"])
        fig.suptitle(f"{self.title}\n{device}, torch {self.env['torch']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _timing(row: Row, column: str) -> float | None:
    """The row's time in ``column`` (``ms`` or a ``*_ms`` extra) when it is a finite number, else None."""
    value = row.ms if column == "ms" else row.extra.get(column)
    return value if isinstance(value, float | int) and value == value else None  # NaN != NaN: no bar


def _fmt(value: float | str) -> str:
    """A table cell: floats with three significant decimals, strings as they are."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python bench/harness.py RESULTS.json [...]   # re-render each one's .md and .png beside it")
        raise SystemExit(0 if len(sys.argv) > 1 else 2)
    for name in sys.argv[1:]:
        for written in Results.from_json(name).write(Path(name).parent):
            print(written)
