"""`edifice arena` (being built in this session; replaced by its real implementation before it lands)."""

from __future__ import annotations

import argparse

HELP = "arena (in progress)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""


def run(args: argparse.Namespace) -> int:
    """Run the command."""
    raise NotImplementedError
