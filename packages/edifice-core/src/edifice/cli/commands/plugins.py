"""``edifice plugins``: every discovered plugin, its status, version, what it registered, its load time and notes.

The notes column gives a failed plugin's error, the names it lost to another plugin, and flags a plugin whose loading
imports torch: ``edifice list`` then takes seconds instead of a fraction of one.
"""

from __future__ import annotations

import argparse

from edifice.cli.commands import Command
from edifice.cli.output import table, to_json
from edifice.plugins import PluginRecord
from edifice.registry import plugins

__all__ = ["COMMAND", "TORCH_NOTE", "notes"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


#: What ``edifice plugins`` says of a plugin whose loading imported torch.
TORCH_NOTE = "imports torch when loaded, so every edifice command waits for torch (import it in the model module)"


def notes(record: PluginRecord) -> str | None:
    """The NOTES cell: the error, names lost to other plugins, and a torch import at load time."""
    parts = [record.error] if record.error else []
    parts += record.conflicts
    if record.imports_torch:
        parts.append(TORCH_NOTE)
    return "; ".join(parts) or None


def _load_time(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1000:.0f} ms"


def _run(args: argparse.Namespace) -> int:
    records = plugins()
    if args.json:
        print(to_json([record.to_dict() for record in records]))
        return 0
    headers = ("NAME", "STATUS", "DISTRIBUTION", "VERSION", "ARCHS", "BLOCKS", "OPS", "CONVERTERS", "LOAD", "NOTES")
    rows = [
        (
            r.name,
            r.status,
            r.distribution,
            r.version,
            len(r.architectures),
            len(r.blocks),
            len(r.ops),
            len(r.converters),
            _load_time(r.load_seconds),
            notes(r),
        )
        for r in records
    ]
    print(table(headers, rows, right=(4, 5, 6, 7, 8)))
    return 0


COMMAND = Command("plugins", "show the discovered plugins and what each registered", _configure, _run)
