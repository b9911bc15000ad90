"""The plugin hooks (pluggy, project name and entry-point group ``edifice``).

A plugin is a module (or object) with functions decorated by :data:`hookimpl`. Each hook receives a ``register``
callback; registering is all a plugin does at load time, so loading stays fast and torch-free::

    from edifice import hookimpl, ArchSpec

    @hookimpl
    def register_architectures(register):
        register(ArchSpec(name="my_net", ...))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["EdificeHooks", "hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("edifice")
hookimpl = pluggy.HookimplMarker("edifice")


class EdificeHooks:
    """Hook specifications every Edifice plugin may implement."""

    @hookspec
    def register_architectures(self, register: Callable[..., None]) -> None:
        """Register architectures: ``register(ArchSpec(...), replace=False)``."""

    @hookspec
    def register_blocks(self, register: Callable[..., None]) -> None:
        """Register reusable blocks by name: ``register("mamba2", "pkg.module:Mamba2Mixer", replace=False)``."""

    @hookspec
    def register_ops(self, register: Callable[..., None]) -> None:
        """Register kernel overrides of named ops: ``register(OpOverride(...), replace=False)``."""

    @hookspec
    def register_converters(self, register: Callable[..., None]) -> None:
        """Register checkpoint converters: ``register(Converter(...), replace=False)``."""

    @hookspec
    def register_commands(self, cli: Any) -> None:
        """Add CLI sub-commands: ``cli.add_command(name, help=..., configure=fn(parser), run=fn(args) -> int)``."""
