"""Entry point of edifice-arena: adds the ``arena`` and ``train`` commands (torch-free at import)."""

from __future__ import annotations

from typing import Any

from edifice import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``edifice arena`` and ``edifice train``."""
