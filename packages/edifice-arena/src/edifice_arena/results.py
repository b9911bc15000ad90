"""An arena's results: per entry the final metric over seeds, its size and costs; as tables, JSON, CSV and a plot.

The *results* table holds only what training determines (rank, parameters, width, learning rate, metric mean and
spread), so the same command on the same CPU prints the same table; the *costs* table holds measurements (tokens per
second, peak memory, decode time and state), which vary from run to run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edifice.cli.output import table

if TYPE_CHECKING:
    from edifice_arena.arena import ArenaConfig
    from edifice_arena.sizing import Skip

__all__ = ["ArenaResults", "EntryResult", "RunResult"]


@dataclasses.dataclass
class RunResult:
    """One training run: an entry at one learning rate and seed."""

    seed: int
    metric: float
    """The task's metric on the held-out batches after the last step."""
    losses: list[float]
    """Training loss (nats over the counted positions) of every step."""
    evaluations: list[tuple[int, float]]
    """``(step, metric)`` at every evaluation."""
    tokens_per_s: float | None


@dataclasses.dataclass
class EntryResult:
    """One architecture's result at its best learning rate."""

    arch: str
    parameters: int
    d_model: int
    overrides: dict[str, Any]
    """The config fields the arena set (width, layers, vocabulary, per-entry overrides)."""
    lr: float
    """The learning rate kept (the best of the sweep)."""
    runs: list[RunResult]
    """One run per seed at ``lr``."""
    sweep: dict[float, float]
    """Mean final metric at every learning rate tried."""
    tokens_per_s: float | None
    peak_memory_bytes: int | None
    decode_ms_per_token: float | None
    state_bytes: int | None

    @property
    def metric(self) -> float:
        """Mean final metric over the seeds."""
        return statistics.fmean(r.metric for r in self.runs)

    @property
    def spread(self) -> float:
        """Sample standard deviation of the final metric over the seeds (0 for one seed)."""
        values = [r.metric for r in self.runs]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-native description, the summary statistics included."""
        data = dataclasses.asdict(self)
        data["sweep"] = {f"{lr:g}": value for lr, value in self.sweep.items()}
        data["metric"] = {"mean": self.metric, "std": self.spread, "per_seed": [r.metric for r in self.runs]}
        return data


@dataclasses.dataclass
class ArenaResults:
    """What :func:`edifice_arena.run` returns: the entries ranked by their metric, and the skipped with reasons."""

    config: ArenaConfig
    task: dict[str, Any]
    """The task's fields, metric and chance level."""
    entries: list[EntryResult]
    skipped: list[Skip]
    jobs: int = 1
    """Entries that trained at once, each in its own process (their costs were measured side by side)."""

    def __post_init__(self) -> None:
        sign = -1.0 if self.task["higher_is_better"] else 1.0
        self.entries.sort(key=lambda e: sign * e.metric if not math.isnan(e.metric) else math.inf)

    @property
    def metric(self) -> str:
        """Name of the task's metric."""
        return str(self.task["metric"])

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per entry (the CSV's rows)."""
        return [
            {
                "rank": rank,
                "arch": e.arch,
                "parameters": e.parameters,
                "d_model": e.d_model,
                "lr": e.lr,
                f"{self.metric}_mean": e.metric,
                f"{self.metric}_std": e.spread,
                "seeds": len(e.runs),
                "tokens_per_s": e.tokens_per_s,
                "peak_memory_bytes": e.peak_memory_bytes,
                "decode_ms_per_token": e.decode_ms_per_token,
                "state_bytes": e.state_bytes,
            }
            for rank, e in enumerate(self.entries, start=1)
        ]

    @property
    def table(self) -> str:
        """The headline, the results table, the costs table and the skipped entries, as plain text."""
        parts = [self.headline(), ""]
        if self.entries:
            parts += [self.results_table, "", self.costs_table]
        else:
            parts.append("no entry could run")
        if self.skipped:
            parts += ["", "skipped:"] + [f"  {s.arch}: {s.reason}" for s in self.skipped]
        return "\n".join(parts)

    @property
    def results_table(self) -> str:
        """Rank, size, learning rate and final metric of every entry: what training determines (reproducible)."""
        rows = [
            (rank, e.arch, f"{e.parameters:,}", e.d_model, f"{e.lr:g}", self._format_metric(e))
            for rank, e in enumerate(self.entries, start=1)
        ]
        return table(self.result_headers(), rows, right=(0, 2, 3, 4, 5))

    @property
    def costs_table(self) -> str:
        """Training throughput, peak memory and decoding cost of every entry: measurements, which vary by run."""
        rows = [
            (
                e.arch,
                _fmt(e.tokens_per_s, "{:,.0f}"),
                _fmt_bytes(e.peak_memory_bytes),
                _fmt(e.decode_ms_per_token, "{:.3f}"),
                _fmt_bytes(e.state_bytes),
            )
            for e in self.entries
        ]
        return table(self.cost_headers(), rows, right=(1, 2, 3, 4))

    def headline(self) -> str:
        """One line naming the task, its metric and chance level, and the common budget."""
        c = self.config
        size = f"~{c.params:,} parameters" if c.params is not None else f"d_model={c.d_model}"
        chance = self.task["chance"]
        return (
            f"{self.task['task']} (T={self.task['seq_len']}): {self.metric.replace('_', ' ')}, chance {chance:.3g}; "
            f"{size}, {c.n_layers} layers, {c.steps} steps x batch {c.batch_size}, seeds {c.seeds}"
        )

    def result_headers(self) -> tuple[str, ...]:
        """Column names of the results table."""
        spread = " ± std" if self.config.seeds > 1 else ""
        return ("#", "ARCH", "PARAMS", "D_MODEL", "LR", f"{self.metric.upper()}{spread}")

    @staticmethod
    def cost_headers() -> tuple[str, ...]:
        """Column names of the costs table."""
        return ("ARCH", "TRAIN TOK/S", "PEAK MEM", "DECODE MS/TOK", "STATE")

    def _format_metric(self, entry: EntryResult) -> str:
        if self.metric == "accuracy":
            text = f"{entry.metric:.1%}"
            return text + (f" ± {entry.spread:.1%}" if self.config.seeds > 1 else "")
        text = f"{entry.metric:.3f}"
        return text + (f" ± {entry.spread:.3f}" if self.config.seeds > 1 else "")

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-native: config, task, environment, entries (with curves) and skipped entries."""
        import torch

        return {
            "config": self.config.to_dict(),
            "task": self.task,
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "device": _device_name(self.config.device),
                "jobs": self.jobs,
            },
            "entries": [e.to_dict() for e in self.entries],
            "skipped": [{"arch": s.arch, "reason": s.reason} for s in self.skipped],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The results as JSON (also written to ``path`` when given)."""
        text = json.dumps(_finite(self.to_dict()), indent=2, default=str, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per entry as CSV (also written to ``path`` when given)."""
        rows = self.rows()
        buffer = io.StringIO()
        fields = list(rows[0]) if rows else ["rank", "arch"]
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        if path is not None:
            Path(path).write_text(buffer.getvalue(), encoding="utf-8")
        return buffer.getvalue()

    def plot(self, path: str | Path) -> Path:
        """Write a PNG: learning curves (training loss, mean over seeds) and a bar chart of the final metric."""
        from edifice_arena.plot import plot_results

        return plot_results(self, Path(path))


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None or math.isnan(value) else pattern.format(value)


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop returns


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # Linux names the CPU model here; platform.processor() is often empty
        models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        name = models[0].split(":", 1)[1].strip() if models else name
    return f"{name} ({torch.get_num_threads()} threads)"


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (strict JSON has neither), tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def mean_curve(runs: Sequence[RunResult]) -> list[float]:
    """The training loss averaged over runs, step by step (as long as the shortest run)."""
    length = min(len(r.losses) for r in runs)
    return [statistics.fmean(r.losses[i] for r in runs) for i in range(length)]
