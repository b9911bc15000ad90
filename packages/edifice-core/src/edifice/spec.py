"""Architecture specs: pure data describing how to build, feed and check one registered architecture.

An :class:`ArchSpec` holds no code and imports nothing heavy: the config and model are *import strings*, tensors are
described by :class:`TensorSpec` (dtype as a string, a shape made of symbols, config fields and integer expressions,
and a value domain). ``edifice list`` and ``edifice info`` read specs without importing torch.

Shape and condition expressions are tiny Python expressions evaluated safely (see :mod:`edifice.shapes`): names are
config fields or the symbols ``B, T, N, E, H, W``; a dimension that evaluates to ``None`` is dropped, so
``("B", "T if output == 'all' else None", "d_model")`` describes a sequence backbone whose ``output`` field pools.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Literal

from edifice.errors import PluginError

__all__ = ["WEAKENING_FLAGS", "ArchSpec", "BlockSpec", "Converter", "OpOverride", "Paper", "TensorSpec"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_IMPORT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_DOMAIN = re.compile(r"^(float|bool|int)(\[.+,.+[\])])?$")
_DTYPES = ("float32", "float64", "bfloat16", "float16", "int64", "int32", "bool")

#: Flags that switch off or weaken a contract check; setting one requires a reason in ``ArchSpec.reasons``.
WEAKENING_FLAGS = ("batch_coupled", "stochastic_eval", "needs_fit", "needs_cuda", "no_compile_fullgraph")

Layout = Literal["batch", "graph"]


@dataclasses.dataclass(frozen=True)
class Paper:
    """The publication an architecture follows."""

    title: str
    authors: str
    year: int
    arxiv: str | None = None
    url: str | None = None

    @property
    def link(self) -> str | None:
        """A URL to read the paper: the arXiv abstract page when an id is known."""
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else self.url

    def __str__(self) -> str:
        link = self.link
        return f"{self.authors} ({self.year}). {self.title}." + (f" {link}" if link else "")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: dtype, symbolic shape, value domain, and when it is present."""

    shape: tuple[str | int, ...]
    dtype: str = "float32"
    domain: str = "float"
    optional: bool = False
    when: str | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise PluginError(f"TensorSpec dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        if not _DOMAIN.match(self.domain):
            raise PluginError(
                f"TensorSpec domain {self.domain!r} must look like "
                "'float', 'bool', 'float[0, 1]' or 'int[0, vocab_size)'"
            )
        object.__setattr__(self, "shape", tuple(self.shape))


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """Everything the registry, the CLI and the contract kit need to know about one architecture."""

    name: str
    family: str
    distribution: str
    summary: str
    paper: Paper | None
    config: str
    model: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    tiny: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fixed: tuple[str, ...] = ()
    verification: str = ""
    alias_of: str | None = None
    requires_blocks: tuple[str, ...] = ()
    requires_archs: tuple[str, ...] = ()
    layout: Layout = "batch"
    causal: bool = False
    stateful: bool = False
    variable_length: bool = False
    compile_fullgraph: bool = True
    batch_coupled: bool = False
    stochastic: bool = False
    stochastic_eval: bool = False
    needs_fit: bool = False
    needs_cuda: bool = False
    grad_exempt: Mapping[str, str] = dataclasses.field(default_factory=dict)
    interop: tuple[str, ...] = ()
    reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise PluginError(f"invalid ArchSpec {self.name!r}: " + "; ".join(problems))
        for name in ("fixed", "requires_blocks", "requires_archs", "interop"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def _problems(self) -> list[str]:
        out = []
        if not _NAME.match(self.name):
            out.append("name must be lower_snake_case")
        for attr in ("config", "model"):
            if not _IMPORT.match(getattr(self, attr)):
                out.append(f"{attr} must be an import string 'package.module:Name'")
        if not self.outputs:
            out.append("outputs must name at least one tensor")
        if self.verification and not self.verification.startswith(("parity:", "oracle:", "property:")):
            out.append("verification must start with 'parity:', 'oracle:' or 'property:'")
        for flag in self.weakened_checks():
            if not self.reasons.get(flag):
                out.append(f"flag {flag!r} weakens a contract check and needs a reason in reasons[{flag!r}]")
        for glob, reason in self.grad_exempt.items():
            if not reason:
                out.append(f"grad_exempt[{glob!r}] needs a reason")
        if self.stateful and not self.causal:
            out.append("stateful entries step through time and must be causal")
        for key in self.fixed:
            if key not in self.defaults:
                out.append(f"fixed field {key!r} needs its value in defaults")
        return out

    def weakened_checks(self) -> list[str]:
        """Names of the flags set on this spec that weaken a contract check."""
        flags = [f for f in WEAKENING_FLAGS if f != "no_compile_fullgraph" and getattr(self, f)]
        if not self.compile_fullgraph:
            flags.append("no_compile_fullgraph")
        return flags

    @property
    def flags(self) -> dict[str, bool]:
        """The boolean capability flags, by name."""
        names = (
            "causal",
            "stateful",
            "variable_length",
            "compile_fullgraph",
            "batch_coupled",
            "stochastic",
            "stochastic_eval",
            "needs_fit",
            "needs_cuda",
        )
        return {n: bool(getattr(self, n)) for n in names}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-native description of the spec (for ``edifice info --json``)."""
        data: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """A reusable layer registered by name, so that another distribution can use it without importing it."""

    name: str
    target: str
    summary: str = ""

    def __post_init__(self) -> None:
        if not _IMPORT.match(self.target):
            raise PluginError(f"block {self.name!r}: target must be an import string 'package.module:Name'")


@dataclasses.dataclass(frozen=True)
class OpOverride:
    """A faster implementation of a named op, used when its device, dtype, shape predicate and probe all agree."""

    op: str
    name: str
    impl: str
    device: str
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    predicate: str | None = None
    probe: str | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        for attr in ("impl", "predicate", "probe"):
            value = getattr(self, attr)
            if value is not None and not _IMPORT.match(value):
                raise PluginError(f"op override {self.op}/{self.name}: {attr} must be an import string")
        object.__setattr__(self, "dtypes", tuple(self.dtypes))


@dataclasses.dataclass(frozen=True)
class Converter:
    """Maps an external checkpoint format (e.g. ``transformers.LlamaForCausalLM``) onto an Edifice architecture."""

    name: str
    arch: str
    fn: str
    summary: str = ""

    def __post_init__(self) -> None:
        if not _IMPORT.match(self.fn):
            raise PluginError(f"converter {self.name!r}: fn must be an import string 'package.module:function'")
