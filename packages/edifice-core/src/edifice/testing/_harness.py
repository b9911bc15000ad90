"""What every contract check stands on: one architecture under one check (:class:`Case`).

A :class:`Case` knows the spec and the tiny config, builds the model seeded (calling ``prepare`` for ``needs_fit``
entries), draws seeded example inputs, calls the model, names its outputs after the spec's output tensors, and finds
the axes that carry a symbol (the batch axis ``B``, the time axis ``T``, graph nodes ``N`` and edges ``E``).

Axes are found by evaluating a tensor spec's shape twice, with the symbol at its example size and one larger: the
axes whose size changes carry the symbol. This handles plain symbols, expressions (``T + 1``) and conditional
dimensions (``"T if output == 'all' else None"``) alike.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import pytest
import torch
from torch import nn

from edifice.config import ArchConfig
from edifice.inputs import DEFAULT_DIMS, active_specs, dtype_matches, example_inputs, resolve_shape, spec_env
from edifice.registry import config as build_config
from edifice.registry import get_spec, model_class
from edifice.shapes import parse_domain
from edifice.spec import ArchSpec, TensorSpec
from edifice.testing.tol import Tolerance, assert_finite, compare

__all__ = ["CONDITIONING_INPUTS", "SEED", "Case", "ContractError"]

#: Seed of every draw the contract makes (model initialisation, inputs, projections).
SEED = 0
#: Float inputs that condition the model rather than carry data: the zero-input forward keeps their values.
CONDITIONING_INPUTS = frozenset({"timestep", "cond"})
#: Output field for auxiliary training losses (DESIGN §4); allowed without an output spec entry.
AUX_LOSS = "aux_loss"


class ContractError(AssertionError):
    """A contract check failed; the message names the architecture, the check and the numbers."""


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` names a parameter ``name`` (a ``**kwargs`` catch-all does not count: it may reject it)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(name)
    return param is not None and param.kind is not inspect.Parameter.POSITIONAL_ONLY


@dataclasses.dataclass
class Case:
    """One architecture under one contract check."""

    name: str
    check: str
    spec: ArchSpec
    config: ArchConfig
    device: torch.device
    notes: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def create(
        cls, name: str, check: str, overrides: Mapping[str, Any] | None, device: str | torch.device | None
    ) -> Case:
        """Resolve the spec and the tiny config (plus ``overrides``); skip what this machine cannot run."""
        spec = get_spec(name)
        if device is None:
            device = "cuda" if spec.needs_cuda else "cpu"
        dev = torch.device(device)
        if spec.needs_cuda and (dev.type != "cuda" or not torch.cuda.is_available()):
            pytest.skip(f"{check}: needs CUDA ({spec.reasons.get('needs_cuda', 'needs_cuda is set')})")
        if dev.type == "cuda" and not torch.cuda.is_available():
            pytest.skip(f"{check}: no CUDA device here")
        cfg = build_config(name, **{**spec.tiny, **(overrides or {})})
        model_class(name)  # import the model module now, so the one-time import is not timed as part of the check
        return cls(name, check, spec, cfg, dev)

    # -- outcomes --------------------------------------------------------------------------------------------------
    def fail(self, message: str) -> NoReturn:
        """Fail the check with ``message`` (the caller adds the architecture and check names)."""
        raise ContractError(message)

    def skip(self, reason: str) -> NoReturn:
        """Skip the check, saying why (the test id names the architecture; equal reasons group in pytest's summary)."""
        pytest.skip(f"{self.check}: {reason}")

    def reason(self, flag: str) -> str:
        """The spec's reason for setting a contract-weakening flag."""
        return self.spec.reasons.get(flag, "no reason given")

    # -- building and feeding --------------------------------------------------------------------------------------
    def build(self, *, seed: int = SEED) -> nn.Module:
        """The model with the tiny config, initialised from ``seed``, prepared when the spec says ``needs_fit``."""
        from edifice.registry import build

        torch.manual_seed(seed)
        model = build(self.config, device=self.device)
        if self.spec.needs_fit:
            prepare = getattr(model, "prepare", None)
            if not callable(prepare):
                self.fail("the spec sets needs_fit but the model has no prepare() method")
            if inspect.signature(prepare).parameters:
                prepare(**self.inputs(4, seed=seed + 1))
            else:
                prepare()
        return model

    def dims(self, batch_size: int) -> dict[str, int]:
        """Sizes of every shape symbol in example inputs of ``batch_size`` samples."""
        return {**DEFAULT_DIMS, "B": batch_size}

    def env(self, batch_size: int) -> dict[str, Any]:
        """Names a spec expression may use: the config fields and the symbol sizes."""
        return {**spec_env(self.config), **self.dims(batch_size)}

    def inputs(self, batch_size: int, *, seed: int = SEED) -> dict[str, torch.Tensor]:
        """Seeded example inputs of the required tensors (graph edges stay inside their graph: a sample is a graph)."""
        generator = torch.Generator().manual_seed(seed)
        inputs = example_inputs(self.spec, self.config, batch_size, device=self.device, generator=generator)
        return inputs

    def input_specs(self) -> dict[str, TensorSpec]:
        """The input tensor specs active for the config."""
        return active_specs(self.spec.inputs, self.config)

    def output_specs(self) -> dict[str, TensorSpec]:
        """The output tensor specs active for the config."""
        return active_specs(self.spec.outputs, self.config)

    def primary_input(self) -> str:
        """The first active, non-optional input (``x`` or ``input_ids``): what ``step`` takes."""
        for key, ts in self.input_specs().items():
            if not ts.optional:
                return key
        return self.fail("the spec declares no required input, so there is no primary input")

    def call(self, model: nn.Module, inputs: Mapping[str, Any], **extra: Any) -> Any:
        """``model(**inputs)``; entries random in eval (``stochastic_eval``) get a freshly seeded generator."""
        if self.spec.stochastic_eval and "generator" not in extra:
            extra["generator"] = torch.Generator(self.device).manual_seed(SEED)
        return model(**inputs, **extra)

    # -- outputs ---------------------------------------------------------------------------------------------------
    def outputs(self, out: Any, *, what: str = "forward") -> dict[str, torch.Tensor]:
        """Name the tensors of a model output after the spec's outputs; fail on missing or undeclared ones."""
        specs = self.output_specs()
        if isinstance(out, torch.Tensor):
            required = [k for k, ts in specs.items() if not ts.optional]
            keys = required if len(required) == 1 else list(specs) if len(specs) == 1 else []
            if not keys:
                self.fail(
                    f"{what} returned one tensor but the spec declares outputs {', '.join(specs)}; "
                    "return a @edifice.model_output dataclass with those fields"
                )
            return {keys[0]: out}
        if dataclasses.is_dataclass(out) and not isinstance(out, type):
            fields: dict[str, Any] = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        elif isinstance(out, Mapping):
            fields = dict(out)
        else:
            self.fail(
                f"{what} returned {type(out).__name__}; expected a tensor or a @edifice.model_output dataclass "
                "(never a bare tuple)"
            )
        named = {k: v for k, v in fields.items() if isinstance(v, torch.Tensor)}
        missing = [k for k, ts in specs.items() if not ts.optional and k not in named]
        if missing:
            self.fail(f"{what} output lacks {', '.join(repr(k) for k in missing)} declared in the spec's outputs")
        undeclared = [k for k in named if k not in specs and k != AUX_LOSS]
        if undeclared:
            self.fail(
                f"{what} output has tensors {', '.join(repr(k) for k in undeclared)} that the spec's outputs do not "
                f"declare (declared: {', '.join(specs)})"
            )
        return named

    def check_outputs(self, outputs: Mapping[str, torch.Tensor], batch_size: int, *, label: str) -> None:
        """Declared shapes and dtypes, values finite and inside their declared domain."""
        specs = self.output_specs()
        dims, env = self.dims(batch_size), self.env(batch_size)
        for key, tensor in outputs.items():
            ts = specs.get(key)
            where = f"output '{key}' ({label})"
            if ts is None:  # an undeclared aux_loss: a scalar
                ts = TensorSpec(shape=())
            expected = resolve_shape(ts, self.config, dims)
            if tuple(tensor.shape) != expected:
                self.fail(f"{where} has shape {_fmt(tensor.shape)}, expected {_fmt(expected)} (spec {list(ts.shape)})")
            if not dtype_matches(ts.dtype, tensor.dtype):
                self.fail(f"{where} has dtype {tensor.dtype}, the spec declares {ts.dtype}")
            try:
                assert_finite(tensor, name=where)
            except AssertionError as exc:
                self.fail(str(exc))
            domain = parse_domain(ts.domain)
            if domain.low is not None and tensor.numel():
                low, high = domain.bounds(env)
                lo, hi = float(tensor.min()), float(tensor.max())
                if lo < low or hi > high or (hi == high and not domain.high_inclusive):
                    self.fail(f"{where} has values in [{lo:g}, {hi:g}], outside its domain {domain.describe(env)}")

    # -- axes ------------------------------------------------------------------------------------------------------
    def axes(self, ts: TensorSpec, symbol: str, batch_size: int) -> list[int]:
        """The axes of a tensor spec that carry ``symbol`` (see the module docstring)."""
        dims = self.dims(batch_size)
        base = resolve_shape(ts, self.config, dims)
        bumped = resolve_shape(ts, self.config, {**dims, symbol: dims[symbol] + 1})
        if len(base) != len(bumped):
            return []
        return [i for i, (a, b) in enumerate(zip(base, bumped, strict=True)) if a != b]

    def axis(self, ts: TensorSpec, symbol: str, batch_size: int) -> int | None:
        """The first axis that carries ``symbol``, or ``None``."""
        found = self.axes(ts, symbol, batch_size)
        return found[0] if found else None

    def sample_ids(
        self, ts: TensorSpec, inputs: Mapping[str, torch.Tensor], batch_size: int
    ) -> tuple[int, torch.Tensor] | None:
        """``(axis, sample index of each slice along it)`` for a per-sample tensor, else ``None``.

        In the batch layout the per-sample axis is the one that carries ``B``. In the graph layout a sample is a
        graph: node axes (``N``) map through the ``batch`` vector and edge axes (``E``) through their source node.
        """
        first = self.axis(ts, "B", batch_size)
        if self.spec.layout == "graph" and "batch" in inputs:
            node_axis = self.axis(ts, "N", batch_size)
            edge_axis = self.axis(ts, "E", batch_size) if "edge_index" in inputs else None
            candidates = [(a, s) for a, s in ((first, "B"), (node_axis, "N"), (edge_axis, "E")) if a is not None]
            if not candidates:
                return None
            axis, symbol = min(candidates)
            batch = inputs["batch"]
            if symbol == "N":
                return axis, batch
            if symbol == "E":
                return axis, batch[inputs["edge_index"][0]]
            return axis, torch.arange(batch_size, device=batch.device)
        if first is None:
            return None
        return first, torch.arange(batch_size, device=self.device)


def compare_or_fail(case: Case, actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance, what: str) -> None:
    """Fail ``case`` with the worst element when ``actual`` is not within ``tol`` of ``expected``."""
    try:
        mismatch = compare(actual, expected, tol)
    except ValueError as exc:
        case.fail(f"{what}: {exc}")
    if mismatch is not None:
        case.fail(f"{what}: {mismatch}")


def _fmt(shape: tuple[int, ...] | torch.Size) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"
