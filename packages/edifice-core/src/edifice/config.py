"""Torch-free configuration dataclasses that validate themselves.

Every architecture's config subclasses :class:`ArchConfig`, declares each field with :func:`field` (a default and a
one-line docstring), and overrides :meth:`ArchConfig.validate` for cross-field rules. Construction type-checks every
field against its annotation, normalises lists to tuples, and raises :class:`~edifice.errors.ConfigError` naming the
field, what it expects and, for unknown names, the valid options with a close match.

Config fields are JSON-native (activations and dtypes are strings), so a config round-trips through JSON unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from edifice._text import did_you_mean
from edifice.errors import ConfigError

__all__ = ["ACTIVATION_NAMES", "ArchConfig", "field"]

#: Every name ``edifice.blocks.activations.get_activation`` accepts (canonical names and aliases, lower case), kept
#: here so that configs validate an activation without importing torch (a test keeps the two lists equal).
ACTIVATION_NAMES = frozenset(
    {
        "elu", "gelu", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "gelu_tanh", "identity", "leaky_relu", "linear",
        "mish", "none", "quick_gelu", "relu", "relu2", "relu_squared", "sigmoid", "silu", "softplus", "squared_relu",
        "swish", "tanh",
    }
)  # fmt: skip

_MISSING: Any = dataclasses.MISSING
C = TypeVar("C", bound="ArchConfig")


def field(default: Any = _MISSING, doc: str = "", *, default_factory: Callable[[], Any] | None = None) -> Any:
    """Declare a config field with its default and one-line docstring (shown by ``edifice info``)."""
    if not doc:
        raise TypeError("every config field needs a one-line docstring: field(default, 'what it is')")
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(kw_only=True)
class ArchConfig:
    """Base of every architecture config: carries the registry name and the schema version, and validates itself."""

    arch: str = field("", "Registry name of the architecture this config builds.")
    schema_version: int = field(1, "Version of this config's schema; bumped when fields change meaning.")

    #: Documented alternative names accepted by :meth:`from_overrides` (alias -> field), e.g. ``hidden_size``.
    aliases: ClassVar[Mapping[str, str]] = {}

    #: What each schema version changed, for :meth:`migrate_config`: ``{version: {field: value}}`` gives, for a config
    #: saved under ``version - 1``, the value of each field that version added or gave a new meaning, chosen so the
    #: old checkpoint computes what it computed when saved (a callable receives the saved dict and returns it).
    schema_changes: ClassVar[Mapping[int, Mapping[str, Any]]] = {}

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = _check_type(self, f.name, value, hints[f.name])
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        self.validate()

    # -- validation helpers -------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check cross-field rules; subclasses extend this and raise through :meth:`fail`."""

    def fail(self, name: str, message: str) -> typing.NoReturn:
        """Raise a :class:`ConfigError` about field ``name`` with the architecture's name as prefix."""
        value = getattr(self, name, None)
        raise ConfigError(f"{self._label()}: field '{name}'={value!r} {message}")

    def check_positive(self, *names: str, allow_zero: bool = False) -> None:
        """Require each named numeric field to be > 0 (or >= 0 with ``allow_zero``); ``None`` is allowed."""
        for name in names:
            value = getattr(self, name)
            if value is None:
                continue
            if value < 0 or (value == 0 and not allow_zero):
                self.fail(name, "must be " + (">= 0" if allow_zero else "> 0"))

    def check_range(self, name: str, low: float, high: float) -> None:
        """Require ``low <= field <= high`` (``None`` is allowed)."""
        value = getattr(self, name)
        if value is not None and not low <= value <= high:
            self.fail(name, f"must lie in [{low}, {high}]")

    def check_choice(self, name: str, choices: Iterable[Any]) -> None:
        """Require the field's value to be one of ``choices``."""
        allowed = tuple(choices)
        value = getattr(self, name)
        if value not in allowed:
            hint = did_you_mean(value, [str(c) for c in allowed]) if isinstance(value, str) else ""
            self.fail(name, f"is not one of {', '.join(repr(c) for c in allowed)}.{hint}")

    def check_activation(self, *names: str) -> None:
        """Require each named field to name an activation (:data:`ACTIVATION_NAMES`, any case); ``None`` is allowed."""
        for name in names:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or value.lower() not in ACTIVATION_NAMES):
                hint = did_you_mean(value, sorted(ACTIVATION_NAMES)) if isinstance(value, str) else ""
                self.fail(name, f"is not an activation; valid names: {', '.join(sorted(ACTIVATION_NAMES))}.{hint}")

    def check_divides(self, divisor: str, dividend: str) -> None:
        """Require field ``divisor`` to divide field ``dividend`` exactly."""
        d, n = getattr(self, divisor), getattr(self, dividend)
        if d is not None and n is not None and n % d != 0:
            self.fail(divisor, f"must divide {dividend}={n}")

    # -- conversion ------------------------------------------------------------------------------------------------
    @classmethod
    def current_schema_version(cls) -> int:
        """The schema version this class writes (a subclass bumps it by redeclaring ``schema_version``)."""
        default: Any = next(f.default for f in dataclasses.fields(cls) if f.name == "schema_version")
        return int(default)

    @classmethod
    def migrate_config(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Upgrade a saved config dict from schema ``from_version`` to this class's, through :attr:`schema_changes`.

        A field a version added is set to its recorded value only when the saved dict lacks it; a field a version gave
        a new meaning is recorded as a callable, which decides from the saved dict. Raises ``ValueError`` naming the
        first version with no record.
        """
        data = dict(data)
        for version in range(from_version + 1, cls.current_schema_version() + 1):
            if version not in cls.schema_changes:
                raise ValueError(f"{cls.__name__} records no migration to schema {version} (schema_changes)")
            for name, value in cls.schema_changes[version].items():
                if callable(value):
                    data[name] = value(data)
                else:
                    data.setdefault(name, value)
        return data

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-native dict (tuples become lists)."""
        return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        """Return the config as a JSON string with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build a config from a dict such as :meth:`to_dict` returns, rejecting unknown keys."""
        return cls.from_overrides(**dict(data))

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        """Build a config from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_overrides(cls: type[C], **overrides: Any) -> C:
        """Build a config from keyword overrides, resolving documented aliases and naming unknown options."""
        return cls(**cls.resolve_names(overrides))

    @classmethod
    def resolve_names(cls, overrides: Mapping[str, Any], label: str | None = None) -> dict[str, Any]:
        """Map aliases onto field names and raise :class:`ConfigError` for unknown ones."""
        names = cls.field_names()
        resolved: dict[str, Any] = {}
        for key, value in overrides.items():
            target = cls.aliases.get(key, key)
            if target not in names:
                options = ", ".join(sorted(n for n in names if n not in ("arch", "schema_version")))
                raise ConfigError(
                    f"{label or cls.__name__}: unknown option '{key}'. Valid options: {options}."
                    + did_you_mean(key, [*names, *cls.aliases])
                )
            if target in resolved and target != key:
                raise ConfigError(f"{label or cls.__name__}: option '{key}' is an alias of '{target}', given twice")
            resolved[target] = value
        return resolved

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every field of this config class."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Map each field name to its one-line docstring."""
        return {f.name: str(f.metadata.get("doc", "")) for f in dataclasses.fields(cls)}

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **type(self).resolve_names(changes, self._label()))

    def _label(self) -> str:
        return self.arch or type(self).__name__


# -- type checking ---------------------------------------------------------------------------------------------------
_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_describe(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_describe(args[0])}, ...]"
        return "tuple[" + ", ".join(_describe(a) for a in args) + "]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` checked against ``tp`` (int -> float and list -> tuple are the only conversions)."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise _Mismatch
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(args) != len(value):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt): _coerce(v, vt) for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return value
        raise _Mismatch
    if tp is float:
        # NaN and infinities pass every range check (all comparisons with NaN are false) and reach the weights.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Mismatch
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch
        return value
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value


def _check_type(config: ArchConfig, name: str, value: Any, tp: Any) -> Any:
    try:
        return _coerce(value, tp)
    except _Mismatch:
        finite = " (a finite number)" if isinstance(value, float) and not math.isfinite(value) else ""
        raise ConfigError(
            f"{config._label()}: field '{name}' expects {_describe(tp)}{finite}, got {type(value).__name__} ({value!r})"
        ) from None


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value
