"""Fixtures of the contract kit's self-tests: the toy module under a plain name, and toy registration."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edifice.plugins import PluginRecord
from edifice.testing.registration import registrar

HERE = Path(__file__).parent
MODULE = "edifice_kit_toys"


def _load_toys() -> None:
    """Spec import strings need a plain module name: load the toy file as ``edifice_kit_toys``."""
    if MODULE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(MODULE, HERE / f"{MODULE}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {HERE / MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)


_load_toys()


@pytest.fixture
def edifice_plugin() -> Iterator[Callable[..., PluginRecord]]:
    """The kit's ``edifice_plugin`` fixture, also when its pytest plugin is not enabled for this run."""
    with registrar() as register:
        yield register


@pytest.fixture
def register_toy(edifice_plugin: Callable[..., PluginRecord]) -> Callable[..., str]:
    """Register ``toy_spec(name, model, **changes)`` for this test and return the name."""
    from edifice_kit_toys import toy_spec

    def register(name: str = "kit_toy", model: str = "ToyRecurrent", **changes: Any) -> str:
        edifice_plugin(toy_spec(name, model, **changes))
        return name

    return register
