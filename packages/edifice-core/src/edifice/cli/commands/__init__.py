"""The built-in sub-commands and the shape every sub-command shares (torch-free).

Each command module defines ``COMMAND``: its name, a one-line help, ``configure(parser)`` adding its arguments and
``run(args) -> int``. Command modules import nothing heavy at module level, so ``edifice list``, ``info`` and
``plugins`` never import torch; ``summary`` imports it inside ``run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable

from edifice.errors import EdificeError

__all__ = ["BUILTIN", "RESERVED", "Command", "UsageError", "builtin_commands"]


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``edifice`` sub-command."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class UsageError(EdificeError, ValueError):
    """A command was given arguments it cannot act on; the CLI prints the message and exits with status 2."""


#: Modules of the built-in commands, in the order ``edifice --help`` lists them.
BUILTIN: tuple[str, ...] = (
    "edifice.cli.commands.list",
    "edifice.cli.commands.info",
    "edifice.cli.commands.plugins",
    "edifice.cli.commands.summary",
)

#: Command names only one first-party distribution may add (``None``: kept for a command still to come). ``arena``
#: and ``train`` are the main job, added by edifice-arena (DESIGN section 7); ``bench`` is kept for the benchmark
#: harness (section 10). A plugin of any other distribution claiming one is skipped with a warning.
RESERVED: dict[str, str | None] = {"arena": "edifice-arena", "train": "edifice-arena", "bench": None}


def builtin_commands() -> list[Command]:
    """The built-in commands (their modules are torch-free to import)."""
    return [importlib.import_module(module).COMMAND for module in BUILTIN]
