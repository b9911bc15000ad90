"""Plugin discovery and the registries plugins fill (torch-free).

Plugins are found through the entry-point group ``edifice`` and loaded in sorted order. Each plugin's registrations
are staged and committed only when the whole plugin loaded cleanly, so a broken plugin leaves no half-registered
state: it is recorded with its error, a :class:`PluginWarning` is issued, and every other plugin keeps working.
A hook implementation whose name is no Edifice hook (a misspelling) fails its plugin with the unknown names.

Two plugins registering the same name never take each other down: only the clashing item is affected, by a rule that
does not depend on load order. ``replace=True`` is the explicit override and wins; otherwise a first-party
distribution (one of this project's, :func:`~edifice.catalogue.is_first_party`) keeps its names against a third
party, and between equals the plugin loaded first (sorted entry-point names) keeps the name. The loser's item is
skipped with a :class:`PluginWarning` naming both plugins, and noted in its record.

Environment variables:

* ``EDIFICE_STRICT_PLUGINS=1`` -- a failing plugin raises :class:`~edifice.errors.PluginError` instead.
* ``EDIFICE_LOAD_PLUGINS=edifice-attention,edifice-foo`` -- load only these distributions (or entry-point names);
  an empty value loads none.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Any, Literal

import pluggy

from edifice._text import did_you_mean
from edifice.catalogue import CORE_BLOCKS, is_first_party
from edifice.errors import PluginError
from edifice.hookspecs import EdificeHooks
from edifice.spec import ArchSpec, BlockSpec, Converter, OpOverride

__all__ = [
    "PluginRecord",
    "PluginWarning",
    "Registry",
    "collect_specs",
    "get_registry",
    "load_object",
]

ENTRY_POINT_GROUP = "edifice"
#: Owner recorded for what core registers itself (its generic blocks).
CORE_OWNER = "edifice-core"
_KINDS = ("architectures", "blocks", "ops", "converters")


class PluginWarning(UserWarning):
    """Issued when a plugin fails to load and is skipped, or when one of its names is taken by another plugin."""


@dataclasses.dataclass
class PluginRecord:
    """What one plugin is and what it registered (or why it failed)."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    status: Literal["loaded", "failed", "skipped"]
    error: str | None = None
    architectures: list[str] = dataclasses.field(default_factory=list)
    blocks: list[str] = dataclasses.field(default_factory=list)
    ops: list[str] = dataclasses.field(default_factory=list)
    converters: list[str] = dataclasses.field(default_factory=list)
    #: Names this plugin registered that another plugin holds instead (one sentence each, naming both plugins).
    conflicts: list[str] = dataclasses.field(default_factory=list)
    #: Seconds spent importing the entry point and running its registration hooks (``None``: registered in-process).
    load_seconds: float | None = None
    #: Whether loading it imported torch (which every ``edifice`` command then pays for); ``None`` when torch was
    #: already imported, so that it cannot tell.
    imports_torch: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-native form (for ``edifice plugins --json``)."""
        return dataclasses.asdict(self)


def load_object(target: str) -> Any:
    """Import ``"package.module:Attr.path"`` and return the attribute."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class _Clash:
    """A name a plugin registers that another plugin already holds."""

    kind: str
    key: str
    keeps: bool  # whether the newcomer takes it
    replace: bool  # whether the newcomer asked for it with replace=True
    explicit: bool  # whether either side used replace=True (then nobody is warned)


class _Staging:
    """Registrations of one plugin, committed to the registry only if the plugin loads cleanly."""

    def __init__(self, registry: Registry, plugin: str) -> None:
        self.registry = registry
        self.plugin = plugin
        self.items: dict[str, dict[str, tuple[Any, bool]]] = {kind: {} for kind in _KINDS}

    def adder(self, kind: str, expected: type) -> Callable[..., None]:
        def register(item: Any, *args: Any, replace: bool = False) -> None:
            if kind == "blocks" and isinstance(item, str):
                item = BlockSpec(item, *args)
            elif args:
                raise TypeError(f"register() takes one {expected.__name__}")
            if not isinstance(item, expected):
                raise PluginError(f"plugin {self.plugin!r}: register expects a {expected.__name__}, got {item!r}")
            key = _key(kind, item)
            if key in self.items[kind]:
                raise PluginError(f"plugin {self.plugin!r} registers {kind[:-1]} {key!r} twice")
            self.items[kind][key] = (item, replace)

        return register

    def clashes(self, record: PluginRecord) -> list[_Clash]:
        """Every staged name another plugin already holds, and whether this plugin takes it."""
        out = []
        for kind in _KINDS:
            for key, (_item, replace) in self.items[kind].items():
                if key in self.registry._owner[kind]:
                    keeps = self.registry._wins(kind, key, record.distribution, replace)
                    explicit = replace or key in self.registry._explicit[kind]
                    out.append(_Clash(kind, key, keeps, replace, explicit))
        return out

    def commit(self, record: PluginRecord, clashes: list[_Clash]) -> None:
        """Store the staged items; of a clashing name, only the side :meth:`Registry._wins` picks keeps it."""
        lost = {(c.kind, c.key) for c in clashes if not c.keeps}
        for c in clashes:
            self.registry._note_clash(c, self.plugin, record)
        for kind in _KINDS:
            for key, (item, replace) in self.items[kind].items():
                if (kind, key) in lost:
                    continue
                self.registry._store[kind][key] = item
                self.registry._owner[kind][key] = self.plugin
                self.registry._explicit[kind].discard(key)
                if replace:
                    self.registry._explicit[kind].add(key)
                getattr(record, kind).append(key)


def _key(kind: str, item: Any) -> str:
    if kind == "ops":
        return f"{item.op}/{item.name}"
    return str(item.name)


class _CommandCollector:
    """The ``cli`` object passed to ``register_commands``: collects sub-commands for the CLI to add."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.distribution: str | None = None  # of the plugin whose hook is running

    def add_command(self, name: str, *, help: str, configure: Callable[[Any], None], run: Callable[[Any], int]) -> None:
        """Add the sub-command ``edifice <name>``: ``configure(parser)`` adds arguments, ``run(args)`` runs it."""
        self.commands.append(
            {"name": name, "help": help, "configure": configure, "run": run, "distribution": self.distribution}
        )


class Registry:
    """Holds every plugin's registrations; created once per process by :func:`get_registry`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loaded = False
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(EdificeHooks)
        self.records: dict[str, PluginRecord] = {}
        self._store: dict[str, dict[str, Any]] = {kind: {} for kind in _KINDS}
        self._owner: dict[str, dict[str, str]] = {kind: {} for kind in _KINDS}
        #: Keys whose current holder registered them with ``replace=True``.
        self._explicit: dict[str, set[str]] = {kind: set() for kind in _KINDS}
        self._generation = 0
        # Core's generic blocks are always present, whatever EDIFICE_LOAD_PLUGINS says; plugins may replace them.
        for block in CORE_BLOCKS:
            self._store["blocks"][block.name] = block
            self._owner["blocks"][block.name] = CORE_OWNER

    # -- loading ---------------------------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """Increases whenever registrations change (caches keyed on it stay valid otherwise)."""
        return self._generation

    def ensure_loaded(self) -> None:
        """Discover and load entry-point plugins once per process."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            for entry_point in self._entry_points():
                self._load_entry_point(entry_point)

    def _entry_points(self) -> list[metadata.EntryPoint]:
        points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        wanted = os.environ.get("EDIFICE_LOAD_PLUGINS")
        if wanted is None:
            return points
        names = {w.strip() for w in wanted.split(",") if w.strip()}
        chosen = []
        for ep in points:
            dist = ep.dist.name if ep.dist is not None else None
            if ep.name in names or dist in names:
                chosen.append(ep)
            else:
                self.records[ep.name] = PluginRecord(
                    ep.name, dist, _dist_version(ep), ep.value, "skipped", "not in EDIFICE_LOAD_PLUGINS"
                )
        return chosen

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist is not None else None
        torch_before = "torch" in sys.modules
        started = time.perf_counter()
        try:
            plugin = ep.load()
        except Exception as exc:
            record = PluginRecord(ep.name, dist, _dist_version(ep), ep.value, "failed")
            self._time(record, started, torch_before)
            self._fail(record, exc)
            return
        # The record exists (loaded or failed) before the timing is set; the time covers import and hooks alike.
        record = self.register_plugin(plugin, ep.name, distribution=dist, version=_dist_version(ep), module=ep.value)
        self._time(record, started, torch_before)

    @staticmethod
    def _time(record: PluginRecord, started: float, torch_before: bool) -> None:
        record.load_seconds = time.perf_counter() - started
        record.imports_torch = None if torch_before else "torch" in sys.modules

    def register_plugin(
        self,
        plugin: Any,
        name: str,
        *,
        distribution: str | None = None,
        version: str | None = None,
        module: str | None = None,
    ) -> PluginRecord:
        """Register a plugin object (a module or any object with hook implementations) under ``name``."""
        with self._lock:
            if name in self.records and self.records[name].status == "loaded":
                raise PluginError(f"a plugin named {name!r} is already registered")
            record = PluginRecord(name, distribution, version, module or repr(plugin), "loaded")
            staging = _Staging(self, name)
            try:
                self.pm.register(plugin, name=name)
            except Exception as exc:
                return self._fail(record, exc)
            try:
                self._check_hook_names(plugin, name)
                self._call(name, "register_architectures", staging.adder("architectures", ArchSpec))
                self._call(name, "register_blocks", staging.adder("blocks", BlockSpec))
                self._call(name, "register_ops", staging.adder("ops", OpOverride))
                self._call(name, "register_converters", staging.adder("converters", Converter))
                clashes = staging.clashes(record)
                unasked = [c for c in clashes if not c.explicit]
                if unasked and _truthy(os.environ.get("EDIFICE_STRICT_PLUGINS")):
                    raise PluginError(self._clash_message(unasked[0], name, record))
            except Exception as exc:
                self.pm.unregister(name=name)
                return self._fail(record, exc)
            staging.commit(record, clashes)
            self.records[name] = record
            self._generation += 1
            return record

    def _check_hook_names(self, plugin: Any, name: str) -> None:
        """Raise when the plugin implements hooks Edifice does not define (a misspelling registers nothing)."""
        unknown = sorted(
            caller.name
            for caller in self.pm.get_hookcallers(plugin) or ()
            if not caller.has_spec()
            and not all(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin_name == name)
        )
        if unknown:
            known = sorted(n for n in dir(EdificeHooks) if not n.startswith("_"))
            hints = "".join(did_you_mean(u, known) for u in unknown)
            raise PluginError(
                f"unknown hook{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}.{hints} "
                f"Edifice's hooks: {', '.join(known)}"
            )

    # -- name clashes ----------------------------------------------------------------------------------------------
    def _is_first_party_owner(self, owner: str) -> bool:
        if owner == CORE_OWNER:
            return True
        record = self.records.get(owner)
        return record is not None and is_first_party(record.distribution)

    def _wins(self, kind: str, key: str, distribution: str | None, replace: bool) -> bool:
        """Whether a newcomer (of ``distribution``) takes ``key`` from its current holder (the rule: module doc)."""
        if replace:
            return True
        if key in self._explicit[kind]:
            return False
        return is_first_party(distribution) and not self._is_first_party_owner(self._owner[kind][key])

    def _label(self, plugin: str, record: PluginRecord | None) -> str:
        record = record or self.records.get(plugin)
        return f"{plugin!r} ({record.distribution or record.module})" if record is not None else repr(plugin)

    def _clash_message(self, clash: _Clash, newcomer: str, record: PluginRecord) -> str:
        """One sentence naming both plugins, who keeps the name and why."""
        kind, key = clash.kind, clash.key
        holder = self._owner[kind][key]
        both = f"{kind[:-1]} {key!r} is registered by both {self._label(holder, None)}"
        both += f" and {self._label(newcomer, record)}"
        if clash.keeps:
            why = "replace=True" if clash.replace else "the first-party family keeps its name"
            return f"{both}: {newcomer!r} takes it ({why}); the one from {holder!r} is dropped"
        if clash.explicit:
            why = "it registered it with replace=True"
        else:
            why = "already registered: the first-party family keeps its name, otherwise the first loaded; pass "
            why += "replace=True to override on purpose"
        return f"{both}: {holder!r} keeps it ({why}); the one from {newcomer!r} is skipped"

    def _note_clash(self, clash: _Clash, newcomer: str, record: PluginRecord) -> None:
        """Note a clash in the losing side's record, and warn unless ``replace=True`` asked for it."""
        holder_record = self.records.get(self._owner[clash.kind][clash.key])
        message = self._clash_message(clash, newcomer, record)
        if clash.keeps and holder_record is not None:
            getattr(holder_record, clash.kind).remove(clash.key)
        loser = holder_record if clash.keeps else record
        if loser is not None:
            loser.conflicts.append(message)
        if not clash.explicit:
            warnings.warn(f"Edifice plugins: {message}", PluginWarning, stacklevel=5)

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and everything it registered."""
        with self._lock:
            record = self.records.pop(name, None)
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            if record is None:
                return
            for kind in _KINDS:
                for key in getattr(record, kind):
                    if self._owner[kind].get(key) == name:
                        del self._store[kind][key]
                        del self._owner[kind][key]
                        self._explicit[kind].discard(key)
            self._generation += 1

    def _call(self, plugin_name: str, hook_name: str, register: Callable[..., None]) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            if impl.plugin_name == plugin_name:
                impl.function(register=register)

    def _fail(self, record: PluginRecord, exc: BaseException) -> PluginRecord:
        record.status = "failed"
        record.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self.records[record.name] = record
        message = (
            f"Edifice plugin {record.name!r} ({record.distribution or record.module}) failed to load: {record.error}"
        )
        if _truthy(os.environ.get("EDIFICE_STRICT_PLUGINS")):
            raise PluginError(message) from exc
        warnings.warn(message, PluginWarning, stacklevel=4)
        return record

    # -- queries ---------------------------------------------------------------------------------------------------
    def items(self, kind: str) -> Mapping[str, Any]:
        """Registered items of one kind (``architectures``, ``blocks``, ``ops``, ``converters``)."""
        self.ensure_loaded()
        return self._store[kind]

    def owner(self, kind: str, key: str) -> str | None:
        """The plugin that registered ``key``."""
        return self._owner[kind].get(key)

    def commands(self) -> list[dict[str, Any]]:
        """Sub-commands that plugins add to the CLI, each with the distribution that added it."""
        self.ensure_loaded()
        collector = _CommandCollector()
        for impl in self.pm.hook.register_commands.get_hookimpls():
            record = self.records.get(impl.plugin_name)
            collector.distribution = record.distribution if record is not None else None
            try:
                impl.function(cli=collector)
            except Exception as exc:  # a broken command must not take the CLI down
                warnings.warn(f"plugin {impl.plugin_name!r}: register_commands failed: {exc}", PluginWarning, 2)
        return collector.commands

    def iter_records(self) -> Iterator[PluginRecord]:
        """Every plugin seen, loaded or not, sorted by name."""
        self.ensure_loaded()
        return iter(sorted(self.records.values(), key=lambda r: r.name))


def _dist_version(ep: metadata.EntryPoint) -> str | None:
    return ep.dist.version if ep.dist is not None else None


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (plugins load on first query)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def collect_specs(package: str, attribute: str = "SPECS") -> list[Any]:
    """Gather ``attribute`` (a sequence) from every module of ``package`` (e.g. a family's torch-free ``configs``).

    Lets a family keep each architecture's spec beside its config (``configs/<arch>.py`` defines ``SPECS``,
    and optionally ``BLOCKS`` and ``CONVERTERS``) while its plugin stays a three-line loop; modules are visited in
    sorted order so registration is deterministic.
    """
    import pkgutil

    root = importlib.import_module(package)
    found: list[Any] = []
    for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        found.extend(getattr(module, attribute, ()))
    return found
