"""Edifice arena: train registered architectures side by side on the same task, and train one on your data.

``edifice_arena.run(...)`` (or ``edifice arena``) sizes every entry to the same parameter count, trains each on the
same batches with the same optimizer, schedule and budget, and returns :class:`ArenaResults` (``table``,
``to_json``, ``to_csv``, ``plot``). The tasks live in :mod:`edifice_arena.tasks`. Importing this package is light:
the arena (and torch) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ArenaConfig", "ArenaResults", "run"]

_LAZY = {
    "run": "edifice_arena.arena:run",
    "ArenaConfig": "edifice_arena.arena:ArenaConfig",
    "ArenaResults": "edifice_arena.results:ArenaResults",
}

if TYPE_CHECKING:
    from edifice_arena.arena import ArenaConfig, run
    from edifice_arena.results import ArenaResults


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'edifice_arena' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
