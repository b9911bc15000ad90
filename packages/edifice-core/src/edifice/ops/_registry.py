"""Named ops and their dispatch: a vectorised reference, optional kernel overrides, and switches for testing.

Every hot mechanism is an :class:`Op`. Calling an op picks its implementation *at call time*, so swapping an
implementation affects models that are already built:

1. an implementation installed with :func:`swap` (used by ``edifice.testing.mutate_op``) always wins;
2. in ``"reference"`` mode (:func:`use`, or ``EDIFICE_OPS=reference`` read at import) the reference runs;
3. otherwise the highest-priority :class:`~edifice.spec.OpOverride` whose device type matches the first tensor
   argument (``"*"`` matches any device), whose dtypes include that tensor's dtype, whose predicate accepts the call
   and whose probe succeeded runs; ties break on the override's origin and name, so the choice is deterministic;
4. else the reference.

Overrides come from plugins (``register_ops``) and from core itself (:func:`register_core_override`). An override's
impl, predicate and probe are imported, and its probe run, the first time a call could use it (so a CUDA kernel's
probe never runs in a CPU-only session); the outcome is cached for the process. A failing import or probe is
recorded (see :func:`implementations`), warned about once with :class:`OpWarning`, and the call falls back.

Dispatch is plain Python on tensor metadata, so it traces without graph breaks under
``torch.compile(fullgraph=True)``. The few steps that must not be traced (loading plugins, importing an override,
running its probe) are marked as Dynamo's ``assume_constant_result`` marks functions: Dynamo runs them once while
tracing and the graph keeps their answer. Dynamo guards on the registry generation, the mode and any swap, which are
read in traced code, so changing any of them recompiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Literal, ParamSpec, TypeVar

import torch

from edifice._text import did_you_mean
from edifice.dtypes import to_dtype
from edifice.plugins import PluginWarning, get_registry, load_object
from edifice.spec import OpOverride

__all__ = [
    "Implementation",
    "Op",
    "OpWarning",
    "get_op",
    "implementations",
    "mode",
    "names",
    "register_core_override",
    "selected",
    "swap",
    "use",
]

P = ParamSpec("P")
R = TypeVar("R")
FnT = TypeVar("FnT", bound=Callable[..., Any])
Mode = Literal["auto", "reference"]

_MODES: tuple[Mode, ...] = ("auto", "reference")
ANY_DEVICE = "*"
_DYNAMO_CONSTANT_ATTR = "_dynamo_marked_constant"
#: Origin recorded for overrides that core registers itself.
CORE_ORIGIN = "edifice-core"


class OpWarning(PluginWarning):
    """Issued once when an op override cannot be imported or its probe raises; the call falls back."""


class _State:
    """Process-wide dispatch state (a single instance, so Dynamo guards on plain attribute reads)."""

    def __init__(self) -> None:
        self.mode: Mode = "auto"
        self.core_generation = 0
        #: Names of the ops called inside :func:`traced` (None outside it).
        self.trace: set[str] | None = None


_STATE = _State()
_LOCK = threading.RLock()
_OPS: dict[str, Op[..., Any]] = {}
_CORE_OVERRIDES: dict[str, OpOverride] = {}


def _mode_from_env(value: str | None) -> Mode:
    """The mode that ``EDIFICE_OPS`` asks for (unset or empty: ``"auto"``); an unknown value warns and is ignored."""
    value = (value or "").strip().lower()
    if not value:
        return "auto"
    if value in _MODES:
        return value
    warnings.warn(f"EDIFICE_OPS={value!r} is not one of {', '.join(_MODES)}; using 'auto'", OpWarning, stacklevel=2)
    return "auto"


_STATE.mode = _mode_from_env(os.environ.get("EDIFICE_OPS"))
# Create the plugin registry now (cheap: nothing loads until it is queried), so that reading its generation on the
# dispatch path never constructs it inside a torch.compile trace.
get_registry()


class _Candidate:
    """One override of one op, with what importing and probing it found (cached for the process)."""

    def __init__(self, override: OpOverride, origin: str, key: str) -> None:
        self.override = override
        self.origin = origin
        self.key = key
        self.name = override.name
        self.device = override.device
        self.priority = override.priority
        self.status: Literal["pending", "available", "unavailable", "failed"] = "pending"
        self.error: str | None = None
        self.impl: Callable[..., Any] | None = None
        self.predicate: Callable[..., bool] | None = None
        try:
            self.dtypes: tuple[torch.dtype, ...] = tuple(to_dtype(d) for d in override.dtypes)
        except ValueError as exc:
            self.dtypes = ()
            self._fail(exc)

    def activate(self) -> None:
        """Import the impl, predicate and probe, and run the probe, once; failures are recorded and warned about."""
        if self.status != "pending":
            return
        ov = self.override
        try:
            self.predicate = load_object(ov.predicate) if ov.predicate else None
            impl = load_object(ov.impl)
            if not callable(impl):
                raise TypeError(f"{ov.impl} is not callable")
            ok = bool(load_object(ov.probe)()) if ov.probe else True
        except Exception as exc:
            self._fail(exc)
            return
        self.impl = impl
        self.status = "available" if ok else "unavailable"

    def _fail(self, exc: BaseException) -> None:
        self.status = "failed"
        self.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        warnings.warn(
            f"edifice.ops: override {self.name!r} of op {self.override.op!r} (from {self.origin}) is unusable and "
            f"the op falls back: {self.error}",
            OpWarning,
            stacklevel=2,
        )


# Candidates survive registry changes, so a probe runs once per override per process ("cached once"). Each also has
# a unique string key: functions that Dynamo must not trace take only Python constants as arguments.
_CANDIDATES: dict[tuple[OpOverride, str], _Candidate] = {}
_BY_KEY: dict[str, _Candidate] = {}


def _untraced(fn: FnT) -> FnT:
    """Mark ``fn`` exactly as ``torch.compiler.assume_constant_result`` does, without importing ``torch._dynamo``.

    Dynamo calls a marked function while tracing and bakes its (constant) result into the graph; its arguments must
    be Python constants (torch 2.11 cannot pass other objects), hence the names and string keys below. The public
    decorator imports ``torch._dynamo``, which would add seconds to ``import edifice.ops``; a test checks that the
    decorator still sets this attribute.
    """
    setattr(fn, _DYNAMO_CONSTANT_ATTR, True)
    return fn


def _generation() -> tuple[int, int]:
    """A key that changes whenever the set of overrides may have changed."""
    return (get_registry().generation, _STATE.core_generation)


@_untraced
def _refresh(name: str) -> bool:
    """Rebuild op ``name``'s override table from core and the plugin registry (loading plugins on first use)."""
    with _LOCK:
        op = _OPS[name]
        registry = get_registry()
        found = [(ov, CORE_ORIGIN) for ov in _CORE_OVERRIDES.values() if ov.op == op.name]
        for key, ov in registry.items("ops").items():
            if ov.op == op.name:
                found.append((ov, registry.owner("ops", key) or "unknown"))
        table = []
        for ov, origin in found:
            cand = _CANDIDATES.get((ov, origin))
            if cand is None:
                key = f"{origin}:{ov.op}/{ov.name}#{len(_BY_KEY)}"
                cand = _CANDIDATES[(ov, origin)] = _BY_KEY[key] = _Candidate(ov, origin, key)
            table.append(cand)
        table.sort(key=lambda c: (-c.priority, c.origin, c.name))
        # Read the generation after items(): the first query loads the entry-point plugins and bumps it.
        op._table = tuple(table)
        op._table_key = _generation()
    return True


@_untraced
def _available(key: str) -> bool:
    """Whether candidate ``key`` imported and probed successfully (activating it on first use)."""
    with _LOCK:
        cand = _BY_KEY[key]
        cand.activate()
    return cand.status == "available"


def _first_tensor(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    return None


class Op(Generic[P, R]):
    """A named hot mechanism: a vectorised reference, a loop oracle for tests, and call-time dispatch to overrides.

    Calling the op validates the arguments with ``check`` (if given) and runs the implementation the dispatch rules
    of :mod:`edifice.ops` pick. ``reference`` is the pure-PyTorch implementation every override must match;
    ``naive`` is a loop written straight from the paper, used only as a test oracle.
    """

    def __init__(
        self,
        name: str,
        reference: Callable[P, R],
        *,
        naive: Callable[P, R] | None = None,
        check: Callable[P, None] | None = None,
        doc: str | None = None,
    ) -> None:
        if name in _OPS:
            raise ValueError(f"an op named {name!r} is already defined")
        self.name = name
        self.reference = reference
        self.naive = naive
        self.check = check
        self.__doc__ = doc or reference.__doc__
        self.__signature__ = inspect.signature(reference)
        self.__name__ = name
        self.__qualname__ = name
        self.__module__ = reference.__module__
        self._swap: Callable[..., R] | None = None
        self._table: tuple[_Candidate, ...] = ()
        self._table_key: tuple[int, int] | None = None
        _OPS[name] = self

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if _STATE.trace is not None:
            _STATE.trace.add(self.name)
        if self.check is not None:
            self.check(*args, **kwargs)
        _, impl = self._select(args, kwargs)
        return impl(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<edifice op {self.name!r}>"

    def _select(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[str, Callable[..., R]]:
        """The name and callable of the implementation that a call with these arguments runs."""
        if self._swap is not None:
            return "swap", self._swap
        if _STATE.mode == "reference":
            return "reference", self.reference
        if self._table_key != _generation():
            _refresh(self.name)
        table = self._table
        if not table:
            return "reference", self.reference
        tensor = _first_tensor(args, kwargs)
        if tensor is None:
            return "reference", self.reference
        device, dtype = tensor.device.type, tensor.dtype
        for cand in table:
            if cand.device not in (device, ANY_DEVICE) or dtype not in cand.dtypes:
                continue
            if not _available(cand.key):
                continue
            predicate = cand.predicate
            if predicate is not None and not predicate(*args, **kwargs):
                continue
            impl = cand.impl
            if impl is not None:
                return cand.name, impl
        return "reference", self.reference

    def implementations(self) -> list[Implementation]:
        """Every implementation of this op, in the order dispatch tries them (the reference last)."""
        if self._table_key != _generation():
            _refresh(self.name)
        out = [
            Implementation(c.name, self.name, c.origin, c.device, c.override.dtypes, c.priority, c.status, c.error)
            for c in self._table
        ]
        out.append(Implementation("reference", self.name, CORE_ORIGIN, ANY_DEVICE, (), None, "available", None))
        return out


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One implementation of an op as :func:`implementations` reports it."""

    #: The override's name, or ``"reference"``.
    name: str
    #: The op it implements.
    op: str
    #: The plugin that registered it (``"edifice-core"`` for core's own).
    origin: str
    #: Device type it runs on; ``"*"`` for any.
    device: str
    #: Dtype names it accepts; empty for any (the reference).
    dtypes: tuple[str, ...]
    #: Dispatch priority (higher first); None for the reference, which always comes last.
    priority: int | None
    #: ``"pending"`` (not needed yet), ``"available"``, ``"unavailable"`` (probe said no) or ``"failed"``.
    status: str
    #: Why it failed, for ``status == "failed"``.
    error: str | None = None


def get_op(name: str | Op[..., Any]) -> Op[..., Any]:
    """The op called ``name`` (an :class:`Op` passes through); unknown names raise ``KeyError`` with close matches."""
    if isinstance(name, Op):
        return name
    if not isinstance(name, str):
        raise TypeError(f"expected an op name or an edifice.ops.Op, got {type(name).__name__}")
    op = _OPS.get(name)
    if op is None:
        raise KeyError(f"unknown op {name!r}.{did_you_mean(name, _OPS)} Known ops: {', '.join(names())}")
    return op


def names() -> list[str]:
    """Sorted names of every defined op."""
    return sorted(_OPS)


def implementations(name: str | Op[..., Any]) -> list[Implementation]:
    """Every implementation of op ``name`` with its origin, device, dtypes, priority and status, in dispatch order."""
    return get_op(name).implementations()


def selected(name: str | Op[..., Any], *args: Any, **kwargs: Any) -> str:
    """The name of the implementation ``op(*args, **kwargs)`` would run now: an override's, or reference or swap."""
    label, _ = get_op(name)._select(args, kwargs)
    return label


def mode() -> Mode:
    """The current dispatch mode: ``"auto"`` (overrides allowed) or ``"reference"``."""
    return _STATE.mode


class use(contextlib.AbstractContextManager["use"]):  # noqa: N801 - used like a function: ops.use("reference")
    """Set the dispatch mode for the whole process: ``"reference"`` forces every op's reference, ``"auto"`` allows
    overrides. The mode changes at once; used as a context manager, the previous mode comes back on exit."""

    def __init__(self, mode: Mode) -> None:
        if mode not in _MODES:
            raise ValueError(f"edifice.ops.use: mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
        self.previous: Mode = _STATE.mode
        _STATE.mode = mode

    def __exit__(self, *exc: object) -> None:
        _STATE.mode = self.previous


@contextlib.contextmanager
def traced() -> Iterator[set[str]]:
    """Within the block, the names of the ops called (by any caller, nested calls included) collect in the set it
    yields; blocks nest, an outer one also collecting what inner ones saw. The mutation runner uses it to mutate only
    the ops a test calls."""
    outer, names = _STATE.trace, set[str]()
    _STATE.trace = names
    try:
        yield names
    finally:
        _STATE.trace = outer
        if outer is not None:
            outer.update(names)


@contextlib.contextmanager
def swap(name: str | Op[..., Any], impl: Callable[..., Any]) -> Iterator[Op[..., Any]]:
    """Replace op ``name``'s implementation with ``impl`` for every caller (modes and overrides included) until the
    ``with`` block exits; swaps nest. ``edifice.testing.mutate_op`` is built on this."""
    op = get_op(name)
    if not callable(impl):
        raise TypeError(f"edifice.ops.swap({op.name!r}, impl): impl must be callable, got {type(impl).__name__}")
    previous = op._swap
    op._swap = impl
    try:
        yield op
    finally:
        op._swap = previous


def register_core_override(override: OpOverride, *, replace: bool = False) -> None:
    """Register an override that core itself provides (plugins use the ``register_ops`` hook instead)."""
    key = f"{override.op}/{override.name}"
    with _LOCK:
        if key in _CORE_OVERRIDES and not replace:
            raise ValueError(f"core op override {key!r} is already registered")
        _CORE_OVERRIDES[key] = override
        _STATE.core_generation += 1
