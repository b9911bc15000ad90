"""``edifice arena``: train architectures side by side on the same task and show who learns what, how fast.

Torch-free at import (the CLI builds every command's parser, ``edifice list`` included); :func:`run` imports the
arena when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "train architectures side by side on the same task (default: MQAR on CPU, ~3 min) and compare them"

#: Suites: ``default`` (CPU-sized MQAR) and ``zoology`` (the Zoology MQAR sweep, reduced to one GPU's 10 minutes).
SUITES = ("default", "zoology")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    parser.add_argument(
        "--arch",
        type=_names,
        metavar="A,B,...",
        help="comma-separated registry names, or 'all' for every installed causal entry "
        "(default: decoder_only, mamba_ssd, gated_delta_net, lstm, min_gru, and rwkv when installed)",
    )
    parser.add_argument("--task", help="mqar (default), selective_copying, induction_heads, parity or char_lm")
    parser.add_argument(
        "--set",
        dest="task_options",
        metavar="FIELD=VALUE",
        action="append",
        type=_assignment,
        default=[],
        help="a task field, e.g. --set seq_len=128 --set num_kv_pairs=8 (repeatable)",
    )
    parser.add_argument("--suite", choices=SUITES, default="default", help="a preset arena (default: default)")
    parser.add_argument("--params", type=_positive_int, metavar="N", help="target parameter count of every entry")
    parser.add_argument("--d-model", type=_positive_int, metavar="N", help="one width for every entry instead")
    parser.add_argument("--layers", type=_positive_int, metavar="N", help="layers of every entry")
    parser.add_argument("--steps", type=_positive_int, metavar="N", help="optimizer steps of every run")
    parser.add_argument("--batch-size", type=_positive_int, metavar="N", help="sequences per step")
    parser.add_argument("--lr", type=_positive_float, metavar="LR", help="peak learning rate")
    parser.add_argument(
        "--lr-sweep",
        nargs="?",
        const="",
        type=_sweep,
        metavar="LR,LR,...",
        help="train each entry at several learning rates and keep the best (default grid: lr x 1/3, 1, 3)",
    )
    parser.add_argument("--seeds", type=_positive_int, metavar="N", help="runs per entry; the table shows mean ± std")
    parser.add_argument("--device", help="cpu (default) or cuda")
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="entries trained at once on a CPU, each in its own process (default: one per core; 1: one at a time)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the full results as JSON ('-' for stdout)")
    parser.add_argument("--csv", metavar="PATH", help="write one row per entry as CSV ('-' for stdout)")
    parser.add_argument("--plot", metavar="PATH", default="arena.png", help="PNG to write (default arena.png)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")


def run(args: argparse.Namespace) -> int:
    """Size the entries, train them, print the table, write the requested files."""
    import edifice
    from edifice_arena.arena import run as run_arena
    from edifice_arena.progress import RichProgress
    from edifice_arena.suites import suite

    for value, name in ((args.json, "--json"), (args.csv, "--csv")):
        if value is not None and value != "-" and not Path(value).parent.exists():
            raise edifice.ConfigError(f"{name}: the folder of {value!r} does not exist")
    if not edifice.list_architectures():
        print(
            'edifice arena: no architectures are installed; pip install "edifice[all]" (or a family)', file=sys.stderr
        )
        return 1
    configs = suite(args.suite, device=args.device or "cpu")
    results = []
    for index, config in enumerate(configs):
        config = _apply(config, args)
        with RichProgress(_metric(config.task)) as progress:
            result = run_arena(config, progress=progress)
        results.append(result)
        if args.json != "-" and args.csv != "-":
            print(result.table + "\n", flush=True)
        # Each arena's files are written as soon as it finishes: a suite stopped part-way keeps what it measured.
        _write(result, args, f"-{index + 1}" if len(configs) > 1 else "")
    return 0 if any(r.entries for r in results) else 1


def _apply(config: Any, args: argparse.Namespace) -> Any:
    """The suite's config with the command line's choices on top."""
    import dataclasses

    changes: dict[str, Any] = {}
    if args.arch is not None:
        import edifice

        archs = tuple(edifice.list_architectures(causal=True)) if args.arch == ["all"] else tuple(args.arch)
        changes["archs"] = archs
        changes["overrides"] = {k: v for k, v in config.overrides.items() if k in archs}
    if args.task is not None and args.task != config.task:
        changes["task"] = args.task
        changes["task_options"] = {}
    if args.task_options:
        changes["task_options"] = {**changes.get("task_options", config.task_options), **dict(args.task_options)}
    if args.d_model is not None:
        changes.update(d_model=args.d_model, params=None)
    elif args.params is not None:
        changes.update(params=args.params, d_model=None)
    for option, field in (
        ("layers", "n_layers"),
        ("steps", "steps"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("seeds", "seeds"),
        ("device", "device"),
        ("jobs", "jobs"),
    ):
        if getattr(args, option) is not None:
            changes[field] = getattr(args, option)
    if args.lr_sweep is not None:
        lr = changes.get("lr", config.lr)
        changes["lr_sweep"] = tuple(args.lr_sweep) or (lr / 3, lr, lr * 3)
    return dataclasses.replace(config, **changes)


def _metric(task: str) -> str:
    from edifice_arena.tasks import TASKS

    return TASKS[task].metric


def _write(result: Any, args: argparse.Namespace, suffix: str) -> None:
    """The JSON, CSV and PNG outputs of one arena (``suffix`` numbers the arenas of a suite: ``-1``, ``-2``, ...)."""
    if args.json == "-":
        print(result.to_json())
    elif args.json is not None:
        result.to_json(_numbered(args.json, suffix))
    if args.csv == "-":
        print(result.to_csv(), end="")
    elif args.csv is not None:
        result.to_csv(_numbered(args.csv, suffix))
    if not args.no_plot and result.entries:
        path = result.plot(_numbered(args.plot, suffix))
        print(f"plot: {path}", file=sys.stderr)


def _numbered(path: str, suffix: str) -> Path:
    p = Path(path)
    return p.with_name(f"{p.stem}{suffix}{p.suffix}")


# -- argument types (one-line errors through argparse) ----------------------------------------------------------------
def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated architecture names, got {text!r}")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _sweep(text: str) -> list[float]:
    return [_positive_float(part) for part in text.split(",") if part.strip()]


def _assignment(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
