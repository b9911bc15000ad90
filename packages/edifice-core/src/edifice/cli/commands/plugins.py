"""``edifice plugins``: every discovered plugin, its status, version, what it registered and any error."""

from __future__ import annotations

import argparse

from edifice.cli.commands import Command
from edifice.cli.output import table, to_json
from edifice.registry import plugins

__all__ = ["COMMAND"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run(args: argparse.Namespace) -> int:
    records = plugins()
    if args.json:
        print(to_json([record.to_dict() for record in records]))
        return 0
    headers = ("NAME", "STATUS", "DISTRIBUTION", "VERSION", "ARCHS", "BLOCKS", "OPS", "CONVERTERS", "ERROR")
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
            r.error,
        )
        for r in records
    ]
    print(table(headers, rows, right=(4, 5, 6, 7)))
    return 0


COMMAND = Command("plugins", "show the discovered plugins and what each registered", _configure, _run)
