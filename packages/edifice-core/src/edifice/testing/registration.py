"""Register plugin objects for the length of a test (torch-free): the machinery behind the ``edifice_plugin`` fixture.

A test that needs an architecture, block, op override or converter registers it exactly as a third-party plugin
would, through :meth:`edifice.plugins.Registry.register_plugin`, and removes it afterwards::

    with registered(ArchSpec(name="toy", ...)) as record:
        model = edifice.build("toy")
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from edifice.errors import PluginError
from edifice.hookspecs import hookimpl
from edifice.plugins import PluginRecord, get_registry
from edifice.spec import ArchSpec, BlockSpec, Converter, OpOverride

__all__ = ["SpecPlugin", "make_plugin", "registered", "registrar"]

_Item = ArchSpec | BlockSpec | OpOverride | Converter
_counter = itertools.count()


class SpecPlugin:
    """A plugin object that registers a fixed list of specs, block specs, op overrides and converters."""

    def __init__(self, items: tuple[_Item, ...]) -> None:
        self.items = items

    def _register(self, kind: type, register: Callable[..., None]) -> None:
        for item in self.items:
            if isinstance(item, kind):
                register(item)

    @hookimpl
    def register_architectures(self, register: Callable[..., None]) -> None:
        """Register the :class:`ArchSpec` items."""
        self._register(ArchSpec, register)

    @hookimpl
    def register_blocks(self, register: Callable[..., None]) -> None:
        """Register the :class:`BlockSpec` items."""
        self._register(BlockSpec, register)

    @hookimpl
    def register_ops(self, register: Callable[..., None]) -> None:
        """Register the :class:`OpOverride` items."""
        self._register(OpOverride, register)

    @hookimpl
    def register_converters(self, register: Callable[..., None]) -> None:
        """Register the :class:`Converter` items."""
        self._register(Converter, register)


def make_plugin(*items: _Item) -> SpecPlugin:
    """A plugin object registering ``items`` (specs, block specs, op overrides, converters)."""
    for item in items:
        if not isinstance(item, _Item):
            raise TypeError(
                f"make_plugin takes ArchSpec, BlockSpec, OpOverride or Converter items, got {type(item).__name__}"
            )
    return SpecPlugin(items)


def _default_name(plugin: Any) -> str:
    if isinstance(plugin, SpecPlugin) and plugin.items:
        first = plugin.items[0]
        label = first.op + "-" + first.name if isinstance(first, OpOverride) else first.name
    else:
        label = getattr(plugin, "__name__", type(plugin).__name__)
    return f"test-{label}-{next(_counter)}"


@contextlib.contextmanager
def registered(*items: Any, name: str | None = None) -> Iterator[PluginRecord]:
    """Register a plugin object, or a plugin made of spec items, for the ``with`` block; unregister it after.

    Raises :class:`~edifice.errors.PluginError` (with the plugin's error) when registration fails or when a name
    it registers is already taken (the registry would skip just that item; a test wants to know).
    """
    if len(items) == 1 and not isinstance(items[0], _Item):
        plugin = items[0]
    else:
        plugin = make_plugin(*items)
    name = name or _default_name(plugin)
    registry = get_registry()
    registry.ensure_loaded()  # entry-point plugins first, so that a clash is reported against this test plugin
    record = registry.register_plugin(plugin, name, module=f"test plugin {name}")
    try:
        if record.status != "loaded":
            raise PluginError(f"test plugin {name!r} failed to register: {record.error}")
        if record.conflicts:
            raise PluginError(f"test plugin {name!r} failed to register: {'; '.join(record.conflicts)}")
        yield record
    finally:
        registry.unregister_plugin(name)


@contextlib.contextmanager
def registrar() -> Iterator[Callable[..., PluginRecord]]:
    """Yield ``register(*items, name=None) -> PluginRecord`` (as :func:`registered`); all is removed on exit."""
    with contextlib.ExitStack() as stack:

        def register(*items: Any, name: str | None = None) -> PluginRecord:
            return stack.enter_context(registered(*items, name=name))

        yield register
