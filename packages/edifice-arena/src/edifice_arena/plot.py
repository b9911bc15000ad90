"""The arena's figure: learning curves of every entry and a bar chart of the final metric (matplotlib, PNG)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from edifice_arena.results import mean_curve

if TYPE_CHECKING:
    from edifice_arena.results import ArenaResults

__all__ = ["plot_results"]


def plot_results(results: ArenaResults, path: Path) -> Path:
    """Left: training loss per step (mean over seeds, smoothed); right: final metric, mean ± std, chance dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=(3, 2))
    colors = plt.get_cmap("tab10")
    metric = results.metric.replace("_", " ")
    for index, entry in enumerate(results.entries):
        curve = _smooth(mean_curve(entry.runs))
        curves.plot(range(1, len(curve) + 1), curve, color=colors(index % 10), label=entry.arch, linewidth=1.5)
    curves.set(xlabel="step", ylabel="training loss (nats, smoothed)", title="learning curves")
    curves.grid(alpha=0.3)
    if results.entries:
        curves.legend(fontsize=8)

    names = [e.arch for e in results.entries]
    means = [e.metric for e in results.entries]
    spreads = [e.spread for e in results.entries]
    bars.bar(names, means, yerr=spreads, capsize=4, color=[colors(i % 10) for i in range(len(names))])
    bars.axhline(results.task["chance"], color="black", linestyle="--", linewidth=1, label="chance")
    if results.metric == "accuracy":
        bars.set_ylim(0, 1.05)
    bars.set(ylabel=metric, title=f"final {metric} ({results.config.seeds} seed{'s' * (results.config.seeds > 1)})")
    bars.tick_params(axis="x", rotation=30, labelsize=8)
    bars.legend(fontsize=8)
    figure.suptitle(results.headline(), fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected (TensorBoard's smoothing)."""
    out, average = [], 0.0
    for index, value in enumerate(values, start=1):
        if math.isnan(value):
            out.append(math.nan)
            continue
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**index))
    return out
