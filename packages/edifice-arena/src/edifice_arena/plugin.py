"""Entry point of edifice-arena: adds the ``arena`` and ``train`` commands (torch-free at import).

Each command lives in ``edifice_arena.commands.<name>`` as a module defining ``HELP``, ``configure(parser)`` and
``run(args) -> int``; those modules import nothing heavy at module level, since building the CLI's parser (for any
command, ``edifice list`` included) calls every ``configure``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from edifice import hookimpl

_COMMANDS = ("arena", "train")


def _command(name: str) -> Any:
    return importlib.import_module(f"edifice_arena.commands.{name}")


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``edifice arena`` and ``edifice train``."""
    for name in _COMMANDS:
        module = _command(name)

        def run(args: argparse.Namespace, _module: Any = module) -> int:
            return int(_module.run(args))

        cli.add_command(name, help=module.HELP, configure=module.configure, run=run)
