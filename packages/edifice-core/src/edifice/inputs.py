"""The single input validator and the example-input generator, both driven by an :class:`ArchSpec`.

Every model checks its inputs through :func:`validate_inputs` (skipped while ``torch.compile`` traces), so every
architecture reports a bad input in one format::

    mamba: input 'x' expected [B, T, 64] (d_model=64), got [2, 16, 32]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from edifice.config import ArchConfig
from edifice.dtypes import to_dtype
from edifice.errors import InputError
from edifice.shapes import evaluate, names_in, parse_domain
from edifice.spec import ArchSpec, TensorSpec

__all__ = [
    "DEFAULT_DIMS",
    "active_specs",
    "dtype_matches",
    "example_inputs",
    "resolve_shape",
    "spec_env",
    "validate_inputs",
]

#: Sizes given to free shape symbols by :func:`example_inputs` unless overridden.
DEFAULT_DIMS: dict[str, int] = {"T": 8, "N": 10, "E": 24, "H": 16, "W": 16}
#: Symbols that must be at least 1: an empty batch, sequence, node set or image has nothing to compute on (a graph
#: may have no edges, so ``E`` may be 0).
NONEMPTY_SYMBOLS = {"B": "sample", "T": "position", "N": "node", "H": "row", "W": "column"}
#: Integer dtypes every index operation accepts (``nn.Embedding``, ``gather``, ``index_select``).
INDEX_DTYPES = (torch.int64, torch.int32)


def spec_env(config: ArchConfig) -> dict[str, Any]:
    """Names a spec expression may use: the config's fields and the derived sizes its ``spec_properties`` lists.

    A derived size is one no field holds (a CNN's pooled width, from its stage widths and expansion): the config
    exposes it as a property and names it in the class attribute ``spec_properties``.
    """
    derived = {name: getattr(config, name) for name in getattr(type(config), "spec_properties", ())}
    return {**derived, **{name: getattr(config, name) for name in config.field_names()}}


def active_specs(specs: Mapping[str, TensorSpec], config: ArchConfig) -> dict[str, TensorSpec]:
    """The tensor specs whose ``when`` condition holds for ``config``."""
    env = spec_env(config)
    return {name: ts for name, ts in specs.items() if ts.when is None or evaluate(ts.when, env)}


def resolve_shape(ts: TensorSpec, config: ArchConfig, dims: Mapping[str, int]) -> tuple[int, ...]:
    """Evaluate a tensor spec's shape with config fields and symbol sizes ``dims`` (``None`` dims dropped)."""
    env = {**spec_env(config), **dims}
    out = []
    for dim in ts.shape:
        value = evaluate(dim, env)
        if value is not None:
            out.append(int(value))
    return tuple(out)


def dtype_matches(declared: str, dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is of the kind a spec's dtype string declares (any float, any integer, or bool)."""
    if declared == "bool":
        return dtype == torch.bool
    if declared.startswith("int"):
        return dtype in INDEX_DTYPES
    return dtype.is_floating_point


def _dtype_words(ts: TensorSpec) -> str:
    if ts.dtype == "bool":
        return "bool"
    if ts.dtype.startswith("int"):
        return f"{ts.dtype} (int64 or int32)"
    return f"{ts.dtype} (a floating dtype)"


def validate_inputs(
    spec: ArchSpec,
    config: ArchConfig,
    inputs: Mapping[str, Any],
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, int]:
    """Check ``inputs`` against the spec's input tensors; return the symbol sizes found (``B``, ``T``, ...).

    With ``device``, every input must be on it; with ``dtype`` (the model's floating dtype), floating inputs must
    have it unless autocast is on for their device.
    """
    if torch.compiler.is_compiling():
        return {}
    name = spec.name
    env = spec_env(config)
    specs = active_specs(spec.inputs, config)
    _check_inactive(spec, config, specs, inputs)
    bound: dict[str, int] = {}
    present: list[tuple[str, TensorSpec, torch.Tensor]] = []
    for key, ts in specs.items():
        value = inputs.get(key)
        if value is None:
            if not ts.optional:
                raise InputError(f"{name}: input '{key}' is required, expected {_describe_shape(ts, env, bound)}")
            continue
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{name}: input '{key}' expected a torch.Tensor, got {type(value).__name__}")
        if device is not None and value.device != device:
            # Checked first: any other check of a tensor on the wrong device would fail inside torch.
            raise InputError(
                f"{name}: input '{key}' expected on device {device} (the model's), got {value.device}; "
                f"move it with .to({str(device)!r})"
            )
        present.append((key, ts, value))
    for key in inputs:
        if key not in specs and inputs[key] is not None:
            raise InputError(f"{name}: unexpected input '{key}'; expected inputs: {', '.join(specs)}")
    # Bind bare symbols first (B, T, N, ...), then check every dimension, so the order of inputs does not matter.
    for _key, ts, value in present:
        shape = resolve_shape_pattern(ts, env)
        if len(shape) == value.dim():
            for dim, size in zip(shape, value.shape, strict=True):
                if isinstance(dim, str) and dim.isidentifier() and dim not in env and dim not in bound:
                    bound[dim] = int(size)
    for key, ts, value in present:
        shape = resolve_shape_pattern(ts, env)
        if len(shape) != value.dim():
            raise _shape_error(name, key, ts, value, env, bound)
        for dim, size in zip(shape, value.shape, strict=True):
            try:
                want = evaluate(dim, {**env, **bound}) if not isinstance(dim, int) else dim
            except NameError:  # an expression of a symbol no input binds (e.g. cu_seqlens [N + 1]): unchecked
                continue
            if want != size:
                raise _shape_error(name, key, ts, value, env, bound)
        if not dtype_matches(ts.dtype, value.dtype):
            raise InputError(f"{name}: input '{key}' expected dtype {_dtype_words(ts)}, got {_short(value.dtype)}")
        if (
            dtype is not None
            and value.is_floating_point()
            and value.dtype != dtype
            and not torch.is_autocast_enabled(value.device.type)
        ):
            raise InputError(
                f"{name}: input '{key}' expected dtype {_short(dtype)} (the model's parameters), got "
                f"{_short(value.dtype)}; cast the input with .to(torch.{_short(dtype)}), the model with "
                f".to(torch.{_short(value.dtype)}), or run under torch.autocast"
            )
        _check_domain(name, key, ts, value, {**env, **bound})
    _check_nonempty(name, present, env, bound)
    return bound


def _check_nonempty(
    name: str, present: list[tuple[str, TensorSpec, torch.Tensor]], env: Mapping[str, Any], bound: Mapping[str, int]
) -> None:
    """Refuse an empty batch, sequence, node set or image (:data:`NONEMPTY_SYMBOLS`) in one clear message."""
    empty = [symbol for symbol in NONEMPTY_SYMBOLS if bound.get(symbol) == 0]
    if not empty:
        return
    symbol = empty[0]
    key, ts, value = next((k, t, v) for k, t, v in present if symbol in resolve_shape_pattern(t, env))
    got = "[" + ", ".join(str(s) for s in value.shape) + "]"
    raise InputError(
        f"{name}: input '{key}' expected {_describe_shape(ts, env, bound)} with {symbol} >= 1 (at least one "
        f"{NONEMPTY_SYMBOLS[symbol]}), got {got}"
    )


def _check_inactive(
    spec: ArchSpec, config: ArchConfig, active: Mapping[str, TensorSpec], inputs: Mapping[str, Any]
) -> None:
    """Raise when an input the spec declares only under another config is given (``input_ids`` without a vocabulary).

    Names the condition the input needs, the config's values it depends on, and the inputs this config takes.
    """
    for key, value in inputs.items():
        ts = spec.inputs.get(key)
        if value is None or key in active or ts is None or ts.when is None:
            continue
        env = spec_env(config)
        depends = ", ".join(f"{n}={env[n]!r}" for n in sorted(names_in(ts.when) & set(env)))
        takes = ", ".join(
            f"{name} [{', '.join(map(str, resolve_shape_pattern(other, env)))}]" + (" (optional)" * other.optional)
            for name, other in active.items()
        )
        raise InputError(
            f"{spec.name}: input '{key}' is taken only when {ts.when}, and this model was built with {depends}; "
            f"it takes {takes or 'no inputs'}"
        )


def _shape_error(
    name: str, key: str, ts: TensorSpec, value: torch.Tensor, env: Mapping[str, Any], bound: Mapping[str, int]
) -> InputError:
    """The error for an input of the wrong shape, naming the expected one (built only when raising)."""
    got = "[" + ", ".join(str(s) for s in value.shape) + "]"
    return InputError(f"{name}: input '{key}' expected {_describe_shape(ts, env, bound)}, got {got}")


def _check_domain(name: str, key: str, ts: TensorSpec, value: torch.Tensor, env: Mapping[str, Any]) -> None:
    domain = parse_domain(ts.domain)
    if domain.low is None or value.numel() == 0 or value.device.type == "meta":
        return
    try:
        low, high = domain.bounds(env)
    except NameError:  # a bound on a symbol no input shape fixes (e.g. B for graphs): nothing to check against
        return
    if low is None or high is None:  # a bound that applies only under some configs (it evaluates to None here)
        return
    vmin, vmax = value.min().item(), value.max().item()
    above = vmax > high if domain.high_inclusive else vmax >= high
    if vmin < low or above:
        raise InputError(
            f"{name}: input '{key}' expected values in {domain.describe(env)}, got min {vmin:g} max {vmax:g}"
        )


def resolve_shape_pattern(ts: TensorSpec, env: Mapping[str, Any]) -> list[str | int]:
    """The shape with conditional dimensions decided and dropped; free symbols stay as strings."""
    out: list[str | int] = []
    for dim in ts.shape:
        if isinstance(dim, int):
            out.append(dim)
            continue
        free = names_in(dim) - set(env)
        if not free:
            value = evaluate(dim, env)
            if value is not None:
                out.append(int(value))
            continue
        out.append(dim)
    return out


def _describe_shape(ts: TensorSpec, env: Mapping[str, Any], bound: Mapping[str, int]) -> str:
    parts: list[str] = []
    used: set[str] = set()
    for dim in resolve_shape_pattern(ts, env):
        if isinstance(dim, int):
            parts.append(str(dim))
        else:
            parts.append(dim)
    for dim in ts.shape:
        used |= names_in(dim) & set(env)
    used -= {n for n in used if isinstance(env[n], str)}
    note = f" ({', '.join(f'{u}={env[u]}' for u in sorted(used))})" if used else ""
    return "[" + ", ".join(parts) + "]" + note


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def example_inputs(
    spec: ArchSpec,
    config: ArchConfig,
    batch_size: int = 2,
    *,
    device: str | torch.device | None = None,
    generator: torch.Generator | None = None,
    include_optional: bool = False,
    dims: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Random inputs matching the spec for ``config``: ``B = batch_size``, other symbols from ``dims``."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    sizes = {**DEFAULT_DIMS, "B": batch_size, **(dims or {})}
    env = {**spec_env(config), **sizes}
    out: dict[str, torch.Tensor] = {}
    for key, ts in active_specs(spec.inputs, config).items():
        if ts.optional and not include_optional:
            continue
        shape = resolve_shape(ts, config, sizes)
        if spec.layout == "graph" and key == "batch":
            n = shape[0]
            tensor = torch.div(torch.arange(n) * batch_size, n, rounding_mode="floor")
        else:
            tensor = _random(ts, shape, env, generator)
        out[key] = tensor
    if spec.layout == "graph" and "edge_index" in out and "batch" in out:
        out["edge_index"] = _edges_within_graphs(out["edge_index"], out["batch"], batch_size, generator)
    return {key: t.to(device) for key, t in out.items()} if device is not None else out


def _edges_within_graphs(
    edge_index: torch.Tensor, batch: torch.Tensor, n_graphs: int, generator: torch.Generator
) -> torch.Tensor:
    """Redraw each edge's target inside its source's graph (``batch`` is sorted), so that a sample is a graph."""
    counts = torch.bincount(batch, minlength=n_graphs)
    starts = torch.cumsum(counts, 0) - counts
    graph = batch[edge_index[0]]
    offset = torch.randint(0, 2**31 - 1, (edge_index.shape[1],), generator=generator)
    target = starts[graph] + offset % counts[graph].clamp(min=1)
    return torch.stack([edge_index[0], target.to(edge_index.dtype)])


def _random(ts: TensorSpec, shape: tuple[int, ...], env: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
    domain = parse_domain(ts.domain)
    dtype = to_dtype(ts.dtype)
    if domain.kind == "bool":
        # Masks default to "everything valid": a random mask could hide whole rows and test nothing useful.
        return torch.ones(shape, dtype=torch.bool)
    if domain.kind == "int":
        low, high = domain.bounds(env)
        low = 0 if low is None else int(low)
        high = 2**15 if high is None else int(high) + (1 if domain.high_inclusive else 0)
        return torch.randint(low, high, shape, generator=generator, dtype=dtype)
    low, high = domain.bounds(env) if domain.low is not None else (None, None)
    if low is not None and high is not None:
        uniform = torch.rand(shape, generator=generator, dtype=dtype)
        return uniform * float(high - low) + float(low)
    return torch.randn(shape, generator=generator, dtype=dtype)
