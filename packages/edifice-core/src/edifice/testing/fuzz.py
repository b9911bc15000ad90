"""Property-based fuzzing of registered architectures through the public API (needs ``hypothesis``).

Two properties, checked on any registered name with its spec's tiny config as the starting point:

* **configs** (:func:`config_overrides`, :func:`check_config`): values drawn within each config field's declared
  type (a few fields at a time, sizes kept tiny) either build a model whose example inputs run forward and backward
  with finite outputs and gradients, or raise :class:`~edifice.ConfigError` naming a field it was given -- never
  another exception type.
* **inputs** (:func:`input_faults`, :func:`check_input_fault`): a valid example input corrupted in one way (one of
  :data:`INPUT_CATEGORIES`) either raises :class:`~edifice.InputError` in the standard format, naming the input, or
  -- for a corruption that keeps the values (a non-contiguous or channels-last layout, an integer dtype of the same
  kind, an empty batch) -- returns what the valid input returns. Never a deep torch traceback, never a silent
  broadcast.

A plugin author fuzzes an entry in a few lines::

    from hypothesis import given
    from edifice.testing import fuzz


    @fuzz.fuzz_settings(20)
    @given(overrides=fuzz.config_overrides("foo_net"))
    def test_foo_net_configs(overrides):
        fuzz.check_config("foo_net", overrides)

Every case is counted in a :class:`Tally` by category; Edifice's own registry-wide fuzz tests report the counts in
pytest's terminal summary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import edifice
from edifice.config import ArchConfig
from edifice.errors import ConfigError, InputError
from edifice.spec import TensorSpec

__all__ = [
    "CONFIG_CATEGORY",
    "INPUT_CATEGORIES",
    "PROPERTY",
    "FuzzFailure",
    "InputFault",
    "Tally",
    "check_config",
    "check_input_fault",
    "config_overrides",
    "field_values",
    "fuzz_settings",
    "input_categories",
    "input_faults",
    "run_cases",
]

#: Category of the config cases.
CONFIG_CATEGORY = "config"
#: Categories of input faults, in the order the report lists them.
INPUT_CATEGORIES = (
    "dtype",
    "rank",
    "size",
    "empty_batch",
    "empty_sequence",
    "token_range",
    "non_contiguous",
    "channels_last",
    "device",
)
#: Largest integer a config field is given (sizes stay tiny, so each case costs milliseconds).
MAX_INT = 48
#: Floats tried for float fields besides a uniform draw: zero, signs, tiny, large-ish and non-finite values.
SPECIAL_FLOATS = (0.0, -1.0, 1.0, 0.5, 1e-6, 4.0, math.nan, math.inf, -math.inf)
#: Fields never varied: the registry name and the schema version are the registry's, not the user's.
FIXED_FIELDS = frozenset({"arch", "schema_version"})
#: Vocabulary of the token-input variant of a sequence model in the input cases.
FUZZ_VOCAB = 11
#: Sequence length of the example inputs of the input cases.
FUZZ_T = 6


class FuzzFailure(AssertionError):
    """A fuzz case broke a property; the message names the entry, the case and what happened."""


@dataclasses.dataclass
class Tally:
    """How many cases were tried and how many failed, per category."""

    tried: Counter[str] = dataclasses.field(default_factory=Counter)
    failed: Counter[str] = dataclasses.field(default_factory=Counter)

    def add(self, other: Mapping[str, tuple[int, int]]) -> None:
        """Add counts given as ``{category: (tried, failed)}``."""
        for category, (tried, failed) in other.items():
            self.tried[category] += tried
            self.failed[category] += failed

    def counts(self) -> dict[str, tuple[int, int]]:
        """The counts as ``{category: (tried, failed)}`` (JSON-native, for pytest's user properties)."""
        return {category: (self.tried[category], self.failed[category]) for category in self.tried}

    def lines(self) -> list[str]:
        """One line per category, in :data:`INPUT_CATEGORIES` order after ``config``, then a total."""
        order = [CONFIG_CATEGORY, *INPUT_CATEGORIES]
        categories = sorted(self.tried, key=lambda c: (order.index(c) if c in order else len(order), c))
        out = [f"{c:<16} {self.tried[c]:6d} tried  {self.failed[c]:4d} failed" for c in categories]
        total, bad = sum(self.tried.values()), sum(self.failed.values())
        out.append(f"{'total':<16} {total:6d} tried  {bad:4d} failed")
        return out


#: Key of the ``{category: (tried, failed)}`` counts a fuzz test records in pytest's user properties.
PROPERTY = "edifice_fuzz"


def run_cases(
    category: str,
    cases: st.SearchStrategy[Any],
    check: Callable[[Any], object],
    *,
    examples: int,
    derandomize: bool = True,
    tally: Tally | None = None,
) -> Tally:
    """Run ``check`` on ``examples`` cases drawn from ``cases``, counting them under ``category`` in ``tally``.

    A failing case is shrunk to a minimal one and re-raised by hypothesis; it counts once as failed (the tried count
    includes the replays of shrinking).
    """
    tally = Tally() if tally is None else tally

    @fuzz_settings(examples, derandomize=derandomize)
    @given(cases)
    def run(case: Any) -> None:
        tally.tried[category] += 1
        check(case)

    try:
        run()
    except BaseException:
        tally.failed[category] += 1
        raise
    return tally


def fuzz_settings(examples: int, *, derandomize: bool = True) -> settings:
    """Hypothesis settings for fuzz cases: ``examples`` per test, no deadline, no example database.

    Derandomized by default, so a CI run tries the same cases every time; cases build models, so the "too slow"
    health check does not apply.
    """
    return settings(
        max_examples=examples,
        derandomize=derandomize,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# -- configs ---------------------------------------------------------------------------------------------------------
def field_values(tp: Any, base: Any) -> st.SearchStrategy[Any]:
    """Values of the declared type ``tp``, drawn around ``base`` (the field's tiny or default value)."""
    origin = get_origin(tp)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin in (Union, types.UnionType):
        return st.one_of([field_values(arg, base) for arg in get_args(tp)])
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        high = min(MAX_INT, max(4, 2 * base if isinstance(base, int) and not isinstance(base, bool) else 4))
        return st.integers(-1, high)
    if tp is float:
        return st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(-2.0, 2.0, allow_nan=False))
    if tp is str:
        known = [base] if isinstance(base, str) else []
        return st.sampled_from([*known, "", "no_such_choice"])
    if origin is tuple:
        args = get_args(tp)
        items = list(base) if isinstance(base, tuple | list) else []
        if len(args) == 2 and args[1] is Ellipsis:
            element = field_values(args[0], items[0] if items else None)
            return st.lists(element, max_size=3).map(tuple)
        return st.tuples(*(field_values(a, items[i] if i < len(items) else None) for i, a in enumerate(args)))
    return st.just(base)  # mappings and other containers: kept as they are


@functools.cache
def _fields(name: str) -> tuple[tuple[str, Any, Any], ...]:
    """``(field, declared type, starting value)`` of every field a user may set on ``name``."""
    spec = edifice.get_spec(name)
    cfg = edifice.config(name, **spec.tiny)
    hints = typing.get_type_hints(type(cfg))
    return tuple(
        (f.name, hints[f.name], getattr(cfg, f.name))
        for f in dataclasses.fields(cfg)
        if f.name not in FIXED_FIELDS and f.name not in spec.fixed
    )


def config_overrides(name: str, *, max_fields: int = 3) -> st.SearchStrategy[dict[str, Any]]:
    """Overrides of one to ``max_fields`` fields of ``name``, each drawn within its declared type."""
    fields = _fields(name)
    if not fields:
        return st.just({})

    @st.composite
    def draw(data: st.DrawFn) -> dict[str, Any]:
        chosen = data(st.lists(st.sampled_from(fields), min_size=1, max_size=max_fields, unique_by=lambda f: f[0]))
        return {field: data(field_values(tp, base)) for field, tp, base in chosen}

    return draw()


def check_config(name: str, overrides: Mapping[str, Any], *, seed: int = 0) -> str:
    """Build ``name`` with its tiny config and ``overrides``; run forward and backward on its example inputs.

    Returns ``"rejected"`` (a :class:`ConfigError` naming a field) or ``"built"`` (finite outputs and gradients);
    raises :class:`FuzzFailure` otherwise.
    """
    spec = edifice.get_spec(name)
    label = f"{name} with {dict(overrides)!r}"
    torch.manual_seed(seed)
    try:
        model = edifice.build(name, **{**spec.tiny, **overrides})
    except ConfigError as exc:
        message = str(exc)
        if not any(_names_field(message, field) for field in overrides):
            raise FuzzFailure(f"{label}: the ConfigError names none of the fields given: {message}") from exc
        return "rejected"
    except Exception as exc:
        raise FuzzFailure(f"{label}: build raised {_brief(exc)} instead of edifice.ConfigError") from exc
    try:
        inputs = edifice.example_inputs(model, 2, generator=torch.Generator().manual_seed(seed))
        _prepare(model, spec, inputs)
        model.train()
        out = model(**inputs)
        leaves = dict(_leaves(out))
        for where, tensor in leaves.items():
            _require_finite(label, f"output {where}", tensor)
        differentiable = [t.float().sum() for t in leaves.values() if t.is_floating_point() and t.requires_grad]
        if differentiable:
            torch.autograd.backward(torch.stack(differentiable).sum())
    except FuzzFailure:
        raise
    except Exception as exc:
        raise FuzzFailure(f"{label}: built, then forward/backward raised {_brief(exc)}") from exc
    for pname, param in model.named_parameters():
        if param.grad is not None:
            _require_finite(label, f"gradient of {pname}", param.grad)
    return "built"


def _names_field(message: str, field: str) -> bool:
    return f"'{field}'" in message or f"{field}=" in message or f" {field} " in message


def _prepare(model: nn.Module, spec: Any, inputs: Mapping[str, torch.Tensor]) -> None:
    """Fit the entries that need it (``needs_fit``) on their example inputs."""
    if not spec.needs_fit:
        return
    prepare: Callable[..., Any] = getattr(model, "prepare")  # noqa: B009 - needs_fit promises the method
    try:
        prepare(**inputs)
    except TypeError:
        prepare()


# -- inputs ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InputFault:
    """One corruption of a valid example input: which category, which input, and the parameters drawn."""

    category: str
    variant: str  # "features" (the tiny config) or "tokens" (with vocab_size set)
    key: str
    detail: tuple[Any, ...] = ()

    def __str__(self) -> str:
        extra = f" {self.detail}" if self.detail else ""
        return f"{self.category} on '{self.key}' ({self.variant} model){extra}"


def _variants(name: str) -> tuple[str, ...]:
    fields = {field for field, _, _ in _fields(name)}
    return ("features", "tokens") if "vocab_size" in fields else ("features",)


@functools.cache
def _model(name: str, variant: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The entry's tiny model in eval mode (with a vocabulary for ``tokens``) and valid inputs for it."""
    spec = edifice.get_spec(name)
    torch.manual_seed(0)
    model = edifice.build(_variant_config(name, variant))
    inputs = edifice.example_inputs(model, 2, generator=torch.Generator().manual_seed(0), T=FUZZ_T)
    _prepare(model, spec, inputs)
    # Optional masks join as all-valid, so that a fault in one input meets a second input carrying B and T.
    for key, ts in _input_specs(name, variant).items():
        if key not in inputs and ts.dtype == "bool" and {str(d) for d in ts.shape} <= {"B", "T"}:
            inputs[key] = _full_optional(name, variant, key, inputs)
    return model.eval(), inputs


@functools.cache
def _variant_config(name: str, variant: str) -> ArchConfig:
    """The tiny config, with a vocabulary for the ``tokens`` variant."""
    spec = edifice.get_spec(name)
    overrides = dict(spec.tiny)
    if variant == "tokens":
        overrides["vocab_size"] = FUZZ_VOCAB
    return edifice.config(name, **overrides)


def _input_specs(name: str, variant: str) -> dict[str, TensorSpec]:
    """The spec's input tensors active for the variant's config (torch-free)."""
    from edifice.inputs import active_specs

    return active_specs(edifice.get_spec(name).inputs, _variant_config(name, variant))


def input_categories(name: str) -> list[str]:
    """The categories of :data:`INPUT_CATEGORIES` that apply to ``name`` (decided from its spec, without torch)."""
    specs = {v: _input_specs(name, v) for v in _variants(name)}
    ranks = {len(ts.shape) for by_key in specs.values() for ts in by_key.values()}
    symbols = {str(d) for by_key in specs.values() for ts in by_key.values() for d in ts.shape}
    out = []
    for category in INPUT_CATEGORIES:
        if category == "channels_last" and not ranks & {4, 5}:
            continue
        if category == "empty_sequence" and "T" not in symbols:
            continue
        if category == "empty_batch" and "B" not in symbols:
            continue
        if category == "token_range" and not _ranged_inputs(name):
            continue
        out.append(category)
    return out


def _ranged_inputs(name: str) -> list[tuple[str, str]]:
    """``(variant, key)`` of integer inputs with a bounded value domain (token ids, labels)."""
    return [
        (variant, key)
        for variant in _variants(name)
        for key, ts in _input_specs(name, variant).items()
        if ts.domain.startswith("int[")
    ]


def input_faults(name: str, category: str) -> st.SearchStrategy[InputFault]:
    """Faults of ``category`` for ``name``: which model variant, which input, and the corruption's parameters."""

    @st.composite
    def draw(data: st.DrawFn) -> InputFault:
        if category == "token_range":
            variant, key = data(st.sampled_from(_ranged_inputs(name)))
        else:
            variant = data(st.sampled_from(_variants(name)))
            keys = sorted(_input_specs(name, variant))
            if category == "channels_last":
                keys = [k for k in keys if len(_input_specs(name, variant)[k].shape) in (4, 5)] or keys
            key = data(st.sampled_from(keys))
        detail: tuple[Any, ...] = ()
        if category == "dtype":
            detail = (data(st.sampled_from(_DTYPES)),)
        elif category == "rank":
            detail = (data(st.sampled_from(("prepend", "append", "drop"))), data(st.integers(1, 2)))
        elif category == "size":
            detail = (data(st.integers(0, 7)), data(st.sampled_from((0, 1, -1, 2, 3))))
        elif category == "token_range":
            detail = (data(st.sampled_from(("above", "below", "far_above"))),)
        elif category == "non_contiguous":
            detail = (data(st.sampled_from(("strided", "transposed", "expanded"))),)
        elif category == "device":
            detail = (data(st.sampled_from(_other_devices())),)
        return InputFault(category, variant, key, detail)

    return draw()


_DTYPES = ("float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")


def _other_devices() -> tuple[str, ...]:
    # "meta" exists everywhere: a model on the CPU must refuse it as clearly as a CUDA tensor.
    return ("meta", "cuda") if torch.cuda.is_available() else ("meta",)


def check_input_fault(name: str, fault: InputFault) -> str:
    """Feed ``name``'s tiny model a valid input with ``fault`` applied; return ``"refused"`` or ``"computed"``.

    Raises :class:`FuzzFailure` for any other outcome: an exception other than :class:`InputError`, an InputError
    not in the standard format, a silently accepted invalid input, or a wrong result for a valid one.
    """
    spec = edifice.get_spec(name)
    model, inputs = _model(name, fault.variant)
    bad, expect = _apply(name, fault, inputs)
    label = f"{name}: {fault}"
    try:
        with torch.no_grad():
            out = _call(model, spec, bad)
    except InputError as exc:
        message = str(exc)
        if expect.must_compute:
            raise FuzzFailure(f"{label}: a valid input was refused: {message}") from exc
        if not message.startswith(f"{name}: ") or "input '" not in message:
            raise FuzzFailure(f"{label}: the InputError is not in the standard format: {message}") from exc
        return "refused"
    except Exception as exc:
        raise FuzzFailure(f"{label}: raised {_brief(exc)} instead of edifice.InputError") from exc
    if expect.must_refuse:
        raise FuzzFailure(f"{label}: the invalid input was accepted silently (outputs {_shapes(out)})")
    if expect.same_as is None:
        for where, tensor in _leaves(out):
            _require_finite(label, f"output {where}", tensor)
        return "computed"
    with torch.no_grad():
        want = _call(model, spec, expect.same_as)
    _require_equal(label, out, want)
    return "computed"


@dataclasses.dataclass(frozen=True)
class _Expect:
    """What a correct model does with a corrupted input.

    ``must_refuse``: raise InputError. Otherwise it may refuse (unless ``must_compute``) or compute: the result of
    ``same_as`` (the same values as valid, contiguous inputs of the declared dtype) or, when that is ``None``, any
    finite result.
    """

    must_refuse: bool = False
    must_compute: bool = False
    same_as: dict[str, torch.Tensor] | None = None


_REFUSE = _Expect(must_refuse=True)


def _full_optional(name: str, variant: str, key: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """An all-valid value of an optional input (an all-True mask)."""
    ts = _input_specs(name, variant)[key]
    batch, steps = next(iter(inputs.values())).shape[:2]
    sizes = {"B": batch, "T": steps}
    return torch.ones([sizes[str(d)] for d in ts.shape], dtype=torch.bool)


def _apply(name: str, fault: InputFault, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], _Expect]:
    """The corrupted inputs and what a correct model does with them."""
    value = inputs[fault.key]

    def with_value(bad: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**inputs, fault.key: bad}

    category = fault.category
    if category == "dtype":
        dtype = getattr(torch, fault.detail[0])
        bad = value.to(dtype)
        kind = (value.dtype == torch.bool, value.is_floating_point())
        if kind != (dtype == torch.bool, dtype.is_floating_point):
            return with_value(bad), _REFUSE  # float <-> integer <-> bool: a different kind of input
        # Same kind, other precision: refuse, or compute what the declared dtype computes on the same values.
        return with_value(bad), _Expect(same_as=with_value(bad.to(value.dtype)))
    if category == "rank":
        where, n = fault.detail
        if where == "prepend":
            bad = value.reshape((1,) * n + tuple(value.shape))
        elif where == "append":
            bad = value.reshape(*value.shape, *(1,) * n)
        else:
            bad = value.reshape(-1) if value.dim() > 1 else value.reshape(())
        return with_value(bad), _REFUSE
    if category == "size":
        if value.dim() == 0:
            return with_value(value.reshape(1)), _REFUSE
        axis = fault.detail[0] % value.dim()
        size = value.shape[axis]
        new = {0: 0, 1: 1, -1: size - 1, 2: size * 2, 3: size + 3}[fault.detail[1]]
        shape = list(value.shape)
        shape[axis] = new if new != size else size + 1
        resized = with_value(_resize(value, shape))
        symbol = _free_symbol(name, fault.variant, fault.key, axis)
        if symbol is None:
            return resized, _REFUSE  # a size the config fixes (a feature size)
        # A free symbol (B, T): the new size disagrees with every other input carrying it, and is valid otherwise.
        others = [k for k in inputs if k != fault.key and symbol in _symbols(name, fault.variant, k)]
        return resized, _REFUSE if others else _Expect(same_as=None if shape[axis] == 0 else resized)
    if category in ("empty_batch", "empty_sequence"):
        axis = 0 if category == "empty_batch" else 1
        return {k: v.narrow(axis, 0, 0) if v.dim() > axis else v for k, v in inputs.items()}, _Expect()
    if category == "token_range":
        bad = value.clone()
        high = int(getattr(_variant_config(name, fault.variant), "vocab_size", None) or int(value.max()) + 1)
        bad.view(-1)[0] = {"above": high, "far_above": high + 10**6, "below": -1}[fault.detail[0]]
        return with_value(bad), _REFUSE
    if category == "non_contiguous":
        kind = fault.detail[0]
        if kind == "expanded" and value.dim() >= 1:
            # A broadcast view (stride 0 along the batch): valid values, computed as from the materialised tensor.
            valid = value.narrow(0, 0, 1).expand_as(value)
            return with_value(valid), _Expect(must_compute=True, same_as=with_value(valid.contiguous()))
        if kind == "strided" or value.dim() < 2:
            bad = torch.stack([value, value], dim=-1)[..., 0]
        else:
            bad = value.transpose(0, -1).contiguous().transpose(0, -1)
        return with_value(bad), _Expect(must_compute=True, same_as=inputs)
    if category == "channels_last":
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(value.dim())
        if fmt is None:  # no such memory format: the feature-major layout of a sequence is the analogue
            bad = value.transpose(1, -1).contiguous().transpose(1, -1) if value.dim() >= 2 else value
        else:
            bad = value.contiguous(memory_format=fmt)
        return with_value(bad), _Expect(must_compute=True, same_as=inputs)
    if category == "device":
        return with_value(value.to(fault.detail[0])), _REFUSE
    raise ValueError(f"unknown input fault category {category!r}")


def _symbols(name: str, variant: str, key: str) -> list[str | None]:
    """Per axis of input ``key``: the free symbol that sizes it (``B``, ``T``, ...) or ``None`` (set by the config)."""
    from edifice.inputs import resolve_shape_pattern

    cfg = _variant_config(name, variant)
    env = {f: getattr(cfg, f) for f in cfg.field_names()}
    pattern = resolve_shape_pattern(_input_specs(name, variant)[key], env)
    return [d if isinstance(d, str) and d.isidentifier() else None for d in pattern]


def _free_symbol(name: str, variant: str, key: str, axis: int) -> str | None:
    symbols = _symbols(name, variant, key)
    return symbols[axis] if axis < len(symbols) else None


def _resize(value: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """A tensor of ``shape`` with ``value``'s dtype whose values stay valid (``value``'s, repeated or truncated)."""
    flat = value.reshape(-1)
    n = math.prod(shape)
    if flat.numel() == 0:
        return torch.zeros(shape, dtype=value.dtype)
    return flat.repeat(-(-n // flat.numel()))[:n].reshape(shape)


def _call(model: nn.Module, spec: Any, inputs: Mapping[str, torch.Tensor]) -> Any:
    extra: dict[str, Any] = {}
    if spec.stochastic_eval:
        extra["generator"] = torch.Generator().manual_seed(0)
    return model(**inputs, **extra)


def _require_equal(label: str, out: Any, expected: Any) -> None:
    got, want = dict(_leaves(out)), dict(_leaves(expected))
    if got.keys() != want.keys():
        raise FuzzFailure(f"{label}: outputs {sorted(got)} differ from the valid input's {sorted(want)}")
    for where, tensor in got.items():
        ref = want[where]
        if tensor.shape != ref.shape:
            raise FuzzFailure(f"{label}: output {where} has shape {list(tensor.shape)}, expected {list(ref.shape)}")
        if not torch.allclose(tensor.float(), ref.float(), rtol=1e-5, atol=1e-5, equal_nan=True):
            worst = (tensor.float() - ref.float()).abs().max().item()
            raise FuzzFailure(f"{label}: output {where} differs from the valid input's by up to {worst:.3g}")


# -- helpers ---------------------------------------------------------------------------------------------------------
def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` of every tensor in an output (a tensor, a dataclass, a mapping or a sequence)."""
    if isinstance(value, torch.Tensor):
        yield prefix or "output", value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}[{key!r}]")
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{prefix}[{i}]")


def _shapes(out: Any) -> str:
    return ", ".join(f"{k} {list(v.shape)}" for k, v in _leaves(out))


def _require_finite(label: str, what: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise FuzzFailure(f"{label}: {what} is not finite")


def _brief(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}({first[:300]!r})"
