"""The named-block registry: core's blocks, plugin blocks, install hints; every block builds on the meta device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import edifice
from edifice import MissingDependency, blocks
from edifice.catalogue import CORE_BLOCKS
from edifice.plugins import PluginWarning, get_registry

# Constructor arguments of core's blocks at a tiny size, and an input for each.
TINY: dict[str, tuple[tuple[Any, ...], Callable[[], torch.Tensor]]] = {
    "rmsnorm": ((8,), lambda: torch.randn(2, 3, 8)),
    "layernorm": ((8,), lambda: torch.randn(2, 3, 8)),
    "mlp": ((8, 16), lambda: torch.randn(2, 3, 8)),
    "swiglu": ((8, 16), lambda: torch.randn(2, 3, 8)),
    "moe": ((8, 16, 4, 2), lambda: torch.randn(2, 3, 8)),
    "rope": ((8,), lambda: torch.arange(3)),
    "causal_conv1d": ((8, 4), lambda: torch.randn(2, 3, 8)),
    "sinusoidal_positions": ((8,), lambda: torch.arange(3)),
    "learned_positions": ((16, 8), lambda: torch.arange(3)),
    "timestep_embedding": ((8,), lambda: torch.tensor([1.0, 500.0])),
}


def test_core_blocks_are_registered() -> None:
    core = {spec.name for spec in CORE_BLOCKS}
    assert {"rmsnorm", "swiglu", "moe", "rope", "causal_conv1d"} <= core
    assert core <= set(blocks.names())
    assert blocks.get("rmsnorm") is blocks.RMSNorm
    assert blocks.get("moe") is blocks.MoEFeedForward
    assert get_registry().owner("blocks", "rope") == "edifice-core"
    assert set(TINY) <= core


def test_missing_blocks_raise_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from edifice.catalogue import BLOCK_PROVIDERS

    monkeypatch.setitem(BLOCK_PROVIDERS, "graph_readout", "edifice-graph")  # a provider that is not released
    with pytest.raises(
        MissingDependency, match=r"block 'graph_readout'; it is planned for edifice-graph, which is not"
    ):
        blocks.get("graph_readout")
    with pytest.raises(MissingDependency, match=r"unknown block 'rmsnrom'.*Did you mean 'rmsnorm'"):
        blocks.get("rmsnrom")
    with pytest.raises(TypeError):
        blocks.get(3)  # type: ignore[arg-type]


class _BlockPlugin:
    @staticmethod
    @edifice.hookimpl
    def register_blocks(register: Callable[..., None]) -> None:
        register("toy_mixer", "torch.nn:Linear", "A stand-in mixer.")
        register("toy_function", "torch:relu", "Not a module.")


@pytest.fixture
def block_plugin() -> Iterator[None]:
    registry = get_registry()
    registry.register_plugin(_BlockPlugin(), "toy-blocks")
    yield
    registry.unregister_plugin("toy-blocks")


def test_plugin_blocks_are_fetched_by_name(block_plugin: None) -> None:
    assert blocks.get("toy_mixer") is nn.Linear
    assert "toy_mixer" in blocks.names()
    with pytest.raises(TypeError, match=r"not an nn\.Module subclass"):
        blocks.get("toy_function")


def test_plugin_cannot_silently_shadow_a_core_block() -> None:
    class Shadow:
        @staticmethod
        @edifice.hookimpl
        def register_blocks(register: Callable[..., None]) -> None:
            register("rmsnorm", "torch.nn:LayerNorm")

    registry = get_registry()
    with pytest.warns(PluginWarning, match="'edifice-core' keeps it \\(already registered"):
        record = registry.register_plugin(Shadow(), "shadow-blocks")
    try:
        assert (record.status, record.blocks) == ("loaded", [])  # only the clashing block is skipped
        assert "'edifice-core' keeps it (already registered" in record.conflicts[0]
        assert blocks.get("rmsnorm") is blocks.RMSNorm
    finally:
        registry.unregister_plugin("shadow-blocks")


@pytest.mark.parametrize("name", sorted(TINY))
def test_block_builds_on_meta_and_resets(name: str) -> None:
    args, make_input = TINY[name]
    cls = blocks.get(name)
    with torch.device("meta"):
        meta = cls(*args)
    assert all(p.is_meta for p in meta.parameters())
    # Materialise and re-initialise: reset_parameters gives finite values everywhere.
    real = meta.to_empty(device="cpu")
    with torch.no_grad():
        for p in real.parameters():
            p.fill_(float("nan"))
    real.reset_parameters()
    assert all(torch.isfinite(p).all() for p in real.parameters())
    out = real(make_input())
    first = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(first).all()
