"""The ``edifice`` command (also ``python -m edifice``): argument parsing, plugin commands and error reporting.

Errors the library raises on purpose (:class:`~edifice.errors.EdificeError`: an unknown architecture, a bad config
value, a bad input) are printed as one line on stderr with exit status 2, like argparse's own usage errors; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

import edifice
from edifice.cli.commands import RESERVED, Command, builtin_commands
from edifice.errors import EdificeError
from edifice.plugins import PluginWarning, get_registry

__all__ = ["build_parser", "main", "plugin_commands"]


def plugin_commands(taken: set[str]) -> list[Command]:
    """Commands added by plugins through ``register_commands``, minus any whose name is ``taken`` or reserved."""
    commands = []
    for entry in get_registry().commands():
        name = entry["name"]
        # A reserved name only its own distribution may add (None: no one yet).
        reserved = name in RESERVED and (RESERVED[name] is None or RESERVED[name] != entry.get("distribution"))
        if name in taken or reserved:
            warnings.warn(
                f"a plugin command named {name!r} is taken by a built-in or reserved command; skipped", PluginWarning, 2
            )
            continue
        taken.add(name)
        commands.append(Command(name, entry["help"], entry["configure"], entry["run"]))
    return commands


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every built-in and plugin command."""
    parser = argparse.ArgumentParser(
        prog="edifice", description="Edifice: neural architectures behind one PyTorch API."
    )
    parser.add_argument("--version", action="version", version=f"edifice-core {edifice.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    builtins = builtin_commands()
    for command in [*builtins, *plugin_commands({c.name for c in builtins})]:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except EdificeError as exc:
        print(f"edifice {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`edifice list | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
