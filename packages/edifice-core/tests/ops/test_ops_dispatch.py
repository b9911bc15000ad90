"""edifice.ops dispatch: plugin overrides chosen only when allowed, reference mode, EDIFICE_OPS, swap, compile."""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
import subprocess
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import edifice
from edifice import OpOverride, hookimpl, ops
from edifice.ops import _registry
from edifice.ops.attention import sdpa_reference
from edifice.ops.norm import rms_norm_reference
from edifice.plugins import get_registry

FAKE = "_edifice_test_fake_ops"
X = torch.ones(2, 4)
NARROW = torch.ones(2, 3)
# Plugin names are unique per process, so no test sees another test's cached probe results.
_PLUGIN_IDS = itertools.count()


def _fake_module() -> types.ModuleType:
    """Implementations, predicates and probes that overrides point at by import string."""
    mod = types.ModuleType(FAKE)
    mod.probe_calls = 0  # type: ignore[attr-defined]

    def probe_true() -> bool:
        mod.probe_calls += 1  # type: ignore[attr-defined]
        return True

    def probe_raises() -> bool:
        raise RuntimeError("no such accelerator")

    mod.seven = lambda x, weight=None, eps=1e-6: torch.full_like(x, 7.0)  # type: ignore[attr-defined]
    mod.eight = lambda x, weight=None, eps=1e-6: torch.full_like(x, 8.0)  # type: ignore[attr-defined]
    mod.wide = lambda x, weight=None, eps=1e-6: x.shape[-1] >= 4  # type: ignore[attr-defined]
    mod.zeros_attention = lambda q, k, v, **kwargs: torch.zeros_like(q)  # type: ignore[attr-defined]
    mod.probe_true = probe_true  # type: ignore[attr-defined]
    mod.probe_false = lambda: False  # type: ignore[attr-defined]
    mod.probe_raises = probe_raises  # type: ignore[attr-defined]
    return mod


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = _fake_module()
    monkeypatch.setitem(sys.modules, FAKE, mod)
    return mod


@pytest.fixture
def register(fake: types.ModuleType) -> Iterator[Callable[..., str]]:
    """Register overrides through a plugin object (as a third party would); unregistered after the test."""
    names: list[str] = []

    def add(*overrides: OpOverride) -> str:
        class Plugin:
            @hookimpl
            def register_ops(self, register: Callable[..., None]) -> None:
                for override in overrides:
                    register(override)

        name = f"test-ops-{next(_PLUGIN_IDS)}"
        assert get_registry().register_plugin(Plugin(), name).status == "loaded"
        names.append(name)
        return name

    yield add
    for name in names:
        get_registry().unregister_plugin(name)


def norm_override(name: str, impl: str = "seven", **fields: Any) -> OpOverride:
    """An override of ``rms_norm`` on CPU pointing into the fake module."""
    fields.setdefault("device", "cpu")
    for key in ("predicate", "probe"):
        if key in fields:
            fields[key] = f"{FAKE}:{fields[key]}"
    return OpOverride(op="rms_norm", name=name, impl=f"{FAKE}:{impl}", **fields)


def status(op: str, name: str) -> _registry.Implementation:
    return {impl.name: impl for impl in ops.implementations(op)}[name]


def test_override_runs_when_device_dtype_predicate_and_probe_allow(register: Any, fake: Any) -> None:
    register(norm_override("fast", dtypes=("float32",), predicate="wide", probe="probe_true"))
    assert ops.selected("rms_norm", X) == "fast"
    assert ops.selected("rms_norm", x=X) == "fast"  # the first tensor may come as a keyword
    assert torch.equal(ops.rms_norm(X), torch.full_like(X, 7.0))
    assert status("rms_norm", "fast").status == "available"
    assert fake.probe_calls == 1


@pytest.mark.parametrize(
    ("override", "x", "state"),
    [
        (norm_override("f64", dtypes=("float64",)), X, "pending"),
        (norm_override("gpu", device="cuda"), X, "pending"),
        (norm_override("wide_only", predicate="wide"), NARROW, "available"),
        (norm_override("absent", probe="probe_false"), X, "unavailable"),
    ],
    ids=["dtype", "device", "predicate", "probe"],
)
def test_override_skipped_otherwise(override: OpOverride, x: torch.Tensor, state: str, register: Any) -> None:
    register(override)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a probe answering False is not a failure
        out = ops.rms_norm(x)
    assert ops.selected("rms_norm", x) == "reference"
    torch.testing.assert_close(out, rms_norm_reference(x), atol=0, rtol=0)
    assert status("rms_norm", override.name).status == state


def test_calls_without_a_tensor_use_the_reference(register: Any) -> None:
    register(norm_override("fast"))
    assert ops.selected("rms_norm", [1.0, 2.0]) == "reference"


def test_probe_runs_once(register: Any, fake: Any) -> None:
    register(norm_override("once", probe="probe_true"))
    for _ in range(3):
        ops.rms_norm(X)
    assert fake.probe_calls == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (norm_override("raises", probe="probe_raises"), "no such accelerator"),
        (OpOverride(op="rms_norm", name="missing", impl="_edifice_no_such_module:fn", device="cpu"), "No module"),
        (norm_override("not_callable", impl="probe_calls"), "not callable"),
    ],
    ids=["probe-raises", "import-fails", "not-callable"],
)
def test_failing_override_warns_once_and_falls_back(override: OpOverride, message: str, register: Any) -> None:
    register(override)
    with pytest.warns(ops.OpWarning, match=message):
        out = ops.rms_norm(X)
    torch.testing.assert_close(out, rms_norm_reference(X), atol=0, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.rms_norm(X)
    record = status("rms_norm", override.name)
    assert record.status == "failed"
    assert record.error is not None
    assert message in record.error


def test_highest_priority_that_fits_wins(register: Any) -> None:
    register(
        norm_override("low", impl="seven", priority=1),
        norm_override("high", impl="eight", priority=5, predicate="wide"),
    )
    assert ops.selected("rms_norm", X) == "high"
    assert ops.selected("rms_norm", NARROW) == "low"
    # Installed plugins (edifice-kernels' CUDA kernels) may list their own overrides: the order of these is the test.
    names = [impl.name for impl in ops.implementations("rms_norm") if impl.name in ("high", "low", "reference")]
    assert names == ["high", "low", "reference"]


def test_plugin_override_outranks_core_torch_sdpa(register: Any) -> None:
    q = torch.randn(1, 2, 3, 4)
    assert ops.selected("sdpa", q, q, q) == "torch_sdpa"
    register(OpOverride(op="sdpa", name="plugin_sdpa", impl=f"{FAKE}:zeros_attention", device="*"))
    assert ops.selected("sdpa", q, q, q) == "plugin_sdpa"
    assert not ops.sdpa(q, q, q).any()


def test_unregistering_the_plugin_restores_the_reference(register: Any) -> None:
    name = register(norm_override("fast"))
    assert ops.selected("rms_norm", X) == "fast"
    get_registry().unregister_plugin(name)  # the registry generation changes; dispatch re-resolves
    assert ops.selected("rms_norm", X) == "reference"


def test_use_reference_bypasses_overrides(register: Any) -> None:
    register(norm_override("fast"))
    assert ops.mode() == "auto"
    with ops.use("reference"):
        assert ops.mode() == "reference"
        assert ops.selected("rms_norm", X) == "reference"
        with ops.use("auto"):
            assert ops.selected("rms_norm", X) == "fast"
        assert ops.mode() == "reference"
    assert ops.selected("rms_norm", X) == "fast"
    try:
        ops.use("reference")  # also a plain global switch
        assert ops.mode() == "reference"
        torch.testing.assert_close(ops.rms_norm(X), rms_norm_reference(X), atol=0, rtol=0)
    finally:
        ops.use("auto")
    with pytest.raises(ValueError, match="mode must be one of 'auto', 'reference'"):
        ops.use("fast")  # type: ignore[arg-type]


@pytest.fixture
def fresh_ops(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], types.ModuleType]:
    """Import a second, independent copy of ``edifice.ops`` under a given ``EDIFICE_OPS``; the original comes back."""

    def load(value: str) -> types.ModuleType:
        monkeypatch.setenv("EDIFICE_OPS", value)
        for name in [m for m in sys.modules if m == "edifice.ops" or m.startswith("edifice.ops.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setattr(edifice, "ops", ops, raising=False)
        return importlib.import_module("edifice.ops")

    return load


@pytest.mark.parametrize(("value", "expected"), [("reference", "reference"), ("auto", "auto"), ("", "auto")])
def test_edifice_ops_env_var_is_read_at_import(value: str, expected: str, fresh_ops: Any, register: Any) -> None:
    register(norm_override("fast"))
    fresh = fresh_ops(value)
    assert fresh is not ops
    assert fresh.mode() == expected
    assert fresh.selected("rms_norm", X) == ("reference" if expected == "reference" else "fast")


def test_unknown_edifice_ops_value_warns(fresh_ops: Any) -> None:
    with pytest.warns(UserWarning, match="EDIFICE_OPS='fast' is not one of auto, reference"):
        fresh = fresh_ops("fast")
    assert fresh.mode() == "auto"


@pytest.mark.slow
def test_edifice_ops_env_var_in_a_subprocess() -> None:
    script = f"""
import sys, types, torch
from edifice import OpOverride, hookimpl, ops
from edifice.plugins import get_registry
mod = types.ModuleType("{FAKE}")
mod.seven = lambda x, weight=None, eps=1e-6: torch.full_like(x, 7.0)
sys.modules["{FAKE}"] = mod
class Plugin:
    @hookimpl
    def register_ops(self, register):
        register(OpOverride(op="rms_norm", name="fast", impl="{FAKE}:seven", device="cpu"))
get_registry().register_plugin(Plugin(), "test-ops")
x = torch.ones(2, 4)
print(ops.mode(), ops.selected("rms_norm", x), ops.selected("sdpa", x[None, None], x[None, None], x[None, None]))
"""
    env = {**os.environ, "EDIFICE_OPS": "reference"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["reference", "reference", "reference"]


class _Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x)


def test_swap_replaces_every_implementation_and_restores(register: Any) -> None:
    register(norm_override("fast"))
    model = _Norm()  # built before the swap: dispatch happens at call time

    def identity(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
        return x

    with ops.swap("rms_norm", identity) as op:
        assert op is ops.rms_norm
        assert ops.selected("rms_norm", X) == "swap"
        assert torch.equal(model(X * 3), X * 3)
        with ops.use("reference"):
            assert torch.equal(ops.rms_norm(X * 3), X * 3)  # a swap wins over the mode, for mutation tests
        with ops.swap(ops.rms_norm, lambda x, weight=None, eps=1e-6: x * 0):
            assert not model(X).any()
        assert torch.equal(model(X * 3), X * 3)  # the inner swap is undone
    assert ops.selected("rms_norm", X) == "fast"
    with pytest.raises(RuntimeError, match="boom"), ops.swap("rms_norm", identity):
        raise RuntimeError("boom")
    assert ops.selected("rms_norm", X) == "fast"
    with pytest.raises(ValueError, match=r"weight must be \[D\]"), ops.swap("rms_norm", identity):
        ops.rms_norm(X, torch.ones(3))  # arguments are still checked


def test_swap_and_lookup_errors() -> None:
    with pytest.raises(TypeError, match="impl must be callable"), ops.swap("rms_norm", 3):  # type: ignore[arg-type]
        pass
    with pytest.raises(KeyError, match="Did you mean 'sdpa'"):
        ops.get_op("sdpaa")
    with pytest.raises(TypeError, match="op name"):
        ops.get_op(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already defined"):
        ops.Op("sdpa", sdpa_reference)


def test_ops_are_named_documented_and_carry_their_oracle() -> None:
    assert {"sdpa", "linear_recurrence", "causal_conv1d", "rms_norm"} <= set(ops.names())
    for name in ops.names():
        op = ops.get_op(name)
        assert op is getattr(ops, name)
        assert op.name == name
        assert ops.get_op(op) is op
        assert callable(op.reference)
        assert callable(op.naive)
        assert op.__doc__
        assert inspect.signature(op) == inspect.signature(op.reference)
        assert name in repr(op)
    core = status("sdpa", "torch_sdpa")
    assert (core.origin, core.device, core.priority) == ("edifice-core", "*", -100)


@pytest.fixture(scope="module")
def compiler() -> None:
    """Warm Dynamo up once (importing it and compiling a first function take seconds, whatever the function)."""
    torch.compile(lambda x: x + 1, fullgraph=True, backend="eager")(torch.zeros(1))


@pytest.mark.usefixtures("compiler")
def test_compile_fullgraph_through_sdpa() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8, generator=gen) for _ in range(3))

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # One call dispatches to torch_sdpa, the other (soft-capped, windowed) to the reference.
        return ops.sdpa(q, k, v, causal=True) + ops.sdpa(q, k, v, causal=True, softcap=3.0, window=2)

    compiled = torch.compile(attend, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), attend(q, k, v), atol=1e-6, rtol=1e-6)


@pytest.mark.usefixtures("compiler")
def test_compile_follows_overrides_modes_and_swaps(register: Any, fake: Any) -> None:
    def norm_plus_one(x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x) + 1

    compiled = torch.compile(norm_plus_one, fullgraph=True, backend="eager")
    name = register(norm_override("fast", probe="probe_true"))
    # The first call traces: loading the plugin override and probing it happen inside the trace.
    assert torch.equal(compiled(X), torch.full_like(X, 8.0))
    assert fake.probe_calls == 1
    with ops.use("reference"):
        torch.testing.assert_close(compiled(X), rms_norm_reference(X) + 1)
    with ops.swap("rms_norm", lambda x, weight=None, eps=1e-6: x * 0):
        assert torch.equal(compiled(X), torch.ones_like(X))
    get_registry().unregister_plugin(name)
    torch.testing.assert_close(compiled(X), rms_norm_reference(X) + 1)


def test_untraced_marker_matches_torch() -> None:
    # _registry marks functions the way torch.compiler.assume_constant_result does; fail loudly if torch changes it.
    marked = torch.compiler.assume_constant_result(lambda: None)
    assert getattr(marked, _registry._DYNAMO_CONSTANT_ATTR) is True


def test_traced_collects_the_ops_called_nested_blocks_included() -> None:
    from edifice.ops._registry import traced

    x = torch.randn(1, 4, 2, 8)
    with traced() as outer:
        ops.rms_norm(x, torch.ones(8))
        with traced() as inner:
            ops.sdpa(x, x, x, causal=True)
    assert inner == {"sdpa"} and outer == {"rms_norm", "sdpa"}
    ops.rms_norm(x, torch.ones(8))  # outside any block nothing is collected
    assert outer == {"rms_norm", "sdpa"}
