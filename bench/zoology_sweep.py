"""The ``--suite zoology`` arena with its grid points trained at once, one process each, and Figure 2 redrawn.

Run: ``python bench/zoology_sweep.py [--device cuda] [--jobs 9] [--out DIR]``; ``--from DIR`` only redraws the
summary from the ``zoology-<i>.json`` files a run left there.

``edifice arena --suite zoology`` trains the nine grid points one after another; their models are small (widths 64 to
256, two layers), so one point leaves most of an H100 idle. This script gives every point its own process (each
point's results are the same: the arena seeds every run from the task, not from the order of the runs; only the
throughput and memory columns are measured side by side) and writes, as each finishes:

* ``zoology-<i>.json`` and ``zoology-<i>.png`` -- the arena's own files of grid point ``i`` (the order of
  ``edifice_arena.suites.ZOOLOGY_GRID`` x ``ZOOLOGY_WIDTHS``);
* ``zoology.md`` -- accuracy per entry, ``(T, pairs)`` and width, as a Markdown table;
* ``zoology.png`` -- Zoology's Figure 2 layout: one panel per ``(T, pairs)``, accuracy against width, one line per
  entry.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from edifice_arena.suites import ZOOLOGY_GRID, ZOOLOGY_WIDTHS, suite


def train_point(index: int, device: str, out: Path) -> str:
    """Train grid point ``index`` of the suite and write its JSON and PNG; returns its table."""
    from edifice_arena.arena import run

    config = suite("zoology", device=device)[index]
    result = run(config)
    result.to_json(out / f"zoology-{index + 1}.json")
    if result.entries:
        result.plot(out / f"zoology-{index + 1}.png")
    return result.table


def load_points(folder: Path) -> list[dict[str, Any]]:
    """The grid points' JSON files under ``folder`` (those that exist), in grid order."""
    points = []
    for index in range(len(ZOOLOGY_GRID) * len(ZOOLOGY_WIDTHS)):
        path = folder / f"zoology-{index + 1}.json"
        if path.exists():
            points.append(json.loads(path.read_text(encoding="utf-8")))
    return points


def accuracy_grid(points: list[dict[str, Any]]) -> dict[str, dict[tuple[int, int], dict[int, float]]]:
    """``{arch: {(T, pairs): {width: accuracy}}}`` from the grid points' JSON."""
    grid: dict[str, dict[tuple[int, int], dict[int, float]]] = {}
    for point in points:
        task = point["config"]["task_options"]
        key = (int(task["seq_len"]), int(task["num_kv_pairs"]))
        width = int(point["config"]["d_model"])
        for entry in point["entries"]:
            grid.setdefault(entry["arch"], {}).setdefault(key, {})[width] = entry["metric"]["mean"]
    return grid


def markdown(points: list[dict[str, Any]]) -> str:
    """Accuracy per entry, one row per ``(T, pairs)`` and entry, one column per width."""
    grid = accuracy_grid(points)
    device = points[0]["environment"]["device"] if points else "-"
    lines = [
        f"Device: {device}. MQAR accuracy after the suite's training (one seed).",
        "",
        "| `(T, pairs)` | entry | " + " | ".join(f"width {w}" for w in ZOOLOGY_WIDTHS) + " |",
        "|---|---|" + "---:|" * len(ZOOLOGY_WIDTHS),
    ]
    for key in ZOOLOGY_GRID:
        for arch in sorted(grid):
            row = grid[arch].get(key, {})
            cells = [f"{row[w]:.3f}" if w in row and row[w] is not None else "-" for w in ZOOLOGY_WIDTHS]
            lines.append(f"| {key} | `{arch}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(points: list[dict[str, Any]], path: Path) -> Path:
    """Zoology's Figure 2 layout: a panel per ``(T, pairs)``, accuracy against width (log scale), a line per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = accuracy_grid(points)
    fig, axes = plt.subplots(1, len(ZOOLOGY_GRID), figsize=(4.2 * len(ZOOLOGY_GRID), 3.6), sharey=True)
    for ax, key in zip(axes, ZOOLOGY_GRID, strict=True):
        for arch in sorted(grid):
            row = grid[arch].get(key, {})
            widths = [w for w in ZOOLOGY_WIDTHS if row.get(w) is not None]
            ax.plot(widths, [row[w] for w in widths], marker="o", label=arch)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ZOOLOGY_WIDTHS), [str(w) for w in ZOOLOGY_WIDTHS])
        ax.set_title(f"T = {key[0]}, {key[1]} key-value pairs")
        ax.set_xlabel("model width")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MQAR accuracy")
    axes[-1].legend(loc="lower right", fontsize=8)
    device = points[0]["environment"]["device"] if points else ""
    fig.suptitle(f"edifice arena --suite zoology ({device})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summarise(out: Path) -> None:
    """Write ``zoology.md`` and ``zoology.png`` from the grid points found under ``out``."""
    points = load_points(out)
    if not points:
        print(f"no zoology-<i>.json under {out}", file=sys.stderr)
        return
    (out / "zoology.md").write_text(markdown(points), encoding="utf-8")
    figure(points, out / "zoology.png")
    print(markdown(points))


def _points(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[0, 1, 2]`` (0-based indices into the suite), each checked against the grid's size."""
    size = len(ZOOLOGY_GRID) * len(ZOOLOGY_WIDTHS)
    try:
        points = [int(item) - 1 for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected grid points such as 1,2,3, got {text!r}") from None
    if not points or not all(0 <= p < size for p in points):
        raise argparse.ArgumentTypeError(f"grid points run from 1 to {size}, got {text!r}")
    return points


def main() -> None:
    """Train the grid points in parallel processes (or only redraw), then write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", type=int, default=len(ZOOLOGY_GRID) * len(ZOOLOGY_WIDTHS))
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument(
        "--points", type=_points, help="only these grid points, 1-based and comma-separated (default: all nine)"
    )
    parser.add_argument("--from", dest="source", type=Path, help="only redraw the summary from the JSON in this folder")
    args = parser.parse_args()
    if args.source is not None:
        summarise(args.source)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    points = args.points or range(len(ZOOLOGY_GRID) * len(ZOOLOGY_WIDTHS))
    # CUDA cannot be re-initialised in a forked child: every point starts a fresh interpreter.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {pool.submit(train_point, index, args.device, args.out): index for index in points}
        for done, future in enumerate(as_completed(futures), start=1):
            print(f"[{done}/{len(futures)}] grid point {futures[future] + 1}:\n{future.result()}\n", flush=True)
            summarise(args.out)


if __name__ == "__main__":
    main()
