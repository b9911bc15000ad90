"""The public registry API: build, configure, list and describe architectures (torch-free until ``build``)."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from typing import TYPE_CHECKING, Any

from edifice._text import close_matches
from edifice.catalogue import BLOCK_PROVIDERS, RELEASED, catalogue, install_hint, normalize_distribution
from edifice.config import ArchConfig, _describe, _type_hints
from edifice.errors import ConfigError, MissingDependency, PluginError, UnknownArchitecture
from edifice.plugins import PluginRecord, get_registry, load_object
from edifice.spec import ArchSpec, Converter

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "ArchInfo",
    "FieldInfo",
    "build",
    "config",
    "config_class",
    "converters",
    "families",
    "get_spec",
    "info",
    "list_architectures",
    "model_class",
    "plugins",
    "why_absent",
]


def get_spec(name: str) -> ArchSpec:
    """Return the spec registered under ``name`` or raise :class:`UnknownArchitecture` with hints."""
    if not isinstance(name, str):
        raise TypeError(f"architecture name must be a str, got {type(name).__name__}")
    specs = get_registry().items("architectures")
    if name in specs:
        spec: ArchSpec = specs[name]
        return spec
    message = f"unknown architecture {name!r}."
    entry = catalogue().get(name)
    if entry is not None:
        message = f"unknown architecture {name!r} ({entry.family} family): {why_absent(entry.distribution)}"
    else:
        matches = close_matches(name, list(specs) or list(catalogue()))
        if matches:
            message += " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
        message += " `edifice list` shows what is installed."
    raise UnknownArchitecture(message)


def why_absent(distribution: str, what: str = "it") -> str:
    """Why ``what`` (a catalogue entry or family of ``distribution``) is not registered here, as one clause.

    *Planned* when ``distribution`` is not released (no extra on the meta package) or is installed but does not
    register it yet; otherwise the distribution is missing (the install line), or installed but not loaded.
    """
    if distribution not in RELEASED:
        released = "which is not released yet; `edifice list` shows what is installed"
        return f"{what} is planned for {distribution}, {released}."
    wanted = normalize_distribution(distribution)
    records = get_registry().iter_records()
    record = next((r for r in records if r.distribution and normalize_distribution(r.distribution) == wanted), None)
    if record is None:
        return f"{what} is part of {distribution}, which is not installed: {install_hint(distribution)}"
    if record.status == "failed":
        return f"{what} is part of {distribution}, whose plugin failed to load: {record.error} (`edifice plugins`)."
    if record.status == "skipped":
        return f"{what} is part of {distribution}, which is installed but not loaded ({record.error})."
    return f"{what} is planned for {distribution} but not in its installed version {record.version} yet."


def _load_path(spec: ArchSpec, kind: str) -> Any:
    """Import the spec's ``config`` or ``model`` path; a broken one is a :class:`PluginError` naming plugin and path."""
    target: str = getattr(spec, kind)
    try:
        return load_object(target)
    except (ImportError, AttributeError) as exc:
        plugin = get_registry().owner("architectures", spec.name)
        raise PluginError(
            f"{spec.name}: plugin {plugin!r} ({spec.distribution}) gives the {kind} path {target!r}, which cannot be "
            f"imported: {type(exc).__name__}: {exc}"
        ) from exc


def config_class(name: str) -> type[ArchConfig]:
    """The config dataclass of architecture ``name`` (imports no torch)."""
    cls = _load_path(get_spec(name), "config")
    if not (isinstance(cls, type) and issubclass(cls, ArchConfig)):
        raise TypeError(f"{name}: spec.config must name an ArchConfig subclass, got {cls!r}")
    return cls


def model_class(name: str) -> type[nn.Module]:
    """The ``nn.Module`` class of architecture ``name`` (imports its module, and so torch)."""
    spec = get_spec(name)
    _check_requirements(spec)
    cls: type[nn.Module] = _load_path(spec, "model")
    return cls


def config(name: str, **overrides: Any) -> ArchConfig:
    """Return the validated config of ``name`` with ``overrides`` applied (aliases accepted, fixed fields refused)."""
    spec = get_spec(name)
    cls = config_class(name)
    resolved = cls.resolve_names(overrides, label=name)
    for key in ("arch", *spec.fixed):
        if key in resolved:
            fixed_value = name if key == "arch" else spec.defaults[key]
            raise ConfigError(
                f"{name}: field '{key}' is fixed to {fixed_value!r} by the registry name and cannot be overridden"
            )
    return cls(**{**spec.defaults, **resolved, "arch": name})


def build(
    name: str | ArchConfig,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build architecture ``name`` (or the architecture a config names) on ``device`` (``"meta"`` allowed)."""
    import torch

    from edifice.dtypes import to_dtype

    if isinstance(name, ArchConfig):
        cfg = name.replace(**overrides) if overrides else name
        if not cfg.arch:
            raise ConfigError(f"{type(cfg).__name__}: field 'arch' is empty; build(name, ...) needs a registry name")
        arch = cfg.arch
        get_spec(arch)
    else:
        arch = name
        cfg = config(arch, **overrides)
    cls = model_class(arch)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = cls(cfg)
    if dtype is not None:
        model = model.to(to_dtype(dtype))
    return model


def _check_requirements(spec: ArchSpec) -> None:
    registry = get_registry()
    for block in spec.requires_blocks:
        if block not in registry.items("blocks"):
            provider = BLOCK_PROVIDERS.get(block)
            hint = f"; {why_absent(provider)}" if provider else "."
            raise MissingDependency(f"{spec.name}: needs the block {block!r}, which no installed plugin provides{hint}")
    for arch in spec.requires_archs:
        if arch not in registry.items("architectures"):
            entry = catalogue().get(arch)
            hint = f"; {why_absent(entry.distribution)}" if entry else "."
            raise MissingDependency(f"{spec.name}: needs the architecture {arch!r}, which is not installed{hint}")


def missing_requirements(name: str) -> str | None:
    """Why ``name`` cannot be built here (a missing block or architecture), or ``None`` when it can."""
    try:
        _check_requirements(get_spec(name))
    except MissingDependency as exc:
        return str(exc)
    return None


def list_architectures(family: str | None = None, pattern: str | None = None, **flags: bool) -> list[str]:
    """Sorted names of registered architectures, filtered by family, a glob ``pattern`` and flag values."""
    specs = get_registry().items("architectures")
    known_flags = set(ArchSpec.__dataclass_fields__)
    for flag in flags:
        if flag not in known_flags or not isinstance(getattr(next(iter(specs.values()), None), flag, False), bool):
            valid = ", ".join(sorted(k for k, f in ArchSpec.__dataclass_fields__.items() if f.type == "bool"))
            raise ValueError(f"list_architectures: unknown flag {flag!r}; valid flags: {valid}")
    out = []
    for name, spec in specs.items():
        if family is not None and spec.family != family:
            continue
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        if any(getattr(spec, flag) != value for flag, value in flags.items()):
            continue
        out.append(name)
    return sorted(out)


def families() -> list[str]:
    """Sorted names of the families that have at least one registered architecture."""
    return sorted({spec.family for spec in get_registry().items("architectures").values()})


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One config field: name, type, default and docstring."""

    name: str
    type: str
    default: Any
    doc: str


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    """What ``edifice info NAME`` shows: the spec, the config fields with defaults, and the owning plugin."""

    spec: ArchSpec
    fields: tuple[FieldInfo, ...]
    plugin: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-native form."""
        return {
            "spec": self.spec.to_dict(),
            "fields": [dataclasses.asdict(f) for f in self.fields],
            "plugin": self.plugin,
        }


def info(name: str) -> ArchInfo:
    """Describe architecture ``name``: its spec, its config fields (defaults as built under this name)."""
    spec = get_spec(name)
    cls = config_class(name)
    hints = _type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if f.name in ("arch", "schema_version"):
            continue
        if f.name in spec.defaults:
            default = spec.defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        fields.append(FieldInfo(f.name, _describe(hints[f.name]), default, str(f.metadata.get("doc", ""))))
    return ArchInfo(spec, tuple(fields), get_registry().owner("architectures", name))


def plugins() -> list[PluginRecord]:
    """Every discovered plugin with its status, version, error (if any) and what it registered."""
    return list(get_registry().iter_records())


def converters() -> dict[str, Converter]:
    """Registered checkpoint converters, by name (e.g. ``transformers.LlamaForCausalLM``)."""
    return dict(get_registry().items("converters"))
