"""Edifice: every important neural architecture behind one PyTorch API.

Importing ``edifice`` is cheap and does not import torch: the registry, configs and specs are torch-free, and the
torch-backed parts (``build``, ``save``/``load``, ``example_inputs``, ``ops``, ``blocks``) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edifice.config import ArchConfig, field
from edifice.errors import (
    CheckpointError,
    ConfigError,
    EdificeError,
    InputError,
    MissingDependency,
    PluginError,
    UnknownArchitecture,
)
from edifice.hookspecs import hookimpl, hookspec
from edifice.registry import (
    build,
    config,
    converters,
    families,
    get_spec,
    info,
    list_architectures,
    plugins,
)
from edifice.spec import ArchSpec, BlockSpec, Converter, OpOverride, Paper, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "ArchConfig",
    "ArchSpec",
    "BlockSpec",
    "CheckpointError",
    "ConfigError",
    "Converter",
    "EdificeError",
    "InputError",
    "MissingDependency",
    "Model",
    "OpOverride",
    "Paper",
    "PluginError",
    "TensorSpec",
    "UnknownArchitecture",
    "__version__",
    "blocks",
    "build",
    "config",
    "convert",
    "converters",
    "example_inputs",
    "families",
    "field",
    "get_spec",
    "hookimpl",
    "hookspec",
    "info",
    "list_architectures",
    "load",
    "model_output",
    "ops",
    "plugins",
    "save",
    "testing",
]

# Torch-backed names, imported on first access so that `import edifice` stays light.
_LAZY = {
    "Model": "edifice.model:Model",
    "example_inputs": "edifice.api:example_inputs",
    "convert": "edifice.api:convert",
    "save": "edifice.io:save",
    "load": "edifice.io:load",
    "model_output": "edifice.outputs:model_output",
    "ops": "edifice.ops",
    "blocks": "edifice.blocks",
    "testing": "edifice.testing",
}

if TYPE_CHECKING:
    from edifice import blocks, ops, testing
    from edifice.api import convert, example_inputs
    from edifice.io import load, save
    from edifice.model import Model
    from edifice.outputs import model_output


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'edifice' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attr) if attr else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
