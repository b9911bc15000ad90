"""A plugin for the CLI tests: torch-free config and specs, plus two plugin commands.

The in-process tests register this module with ``register_plugin``; the subprocess tests find it through a
throwaway ``*.dist-info`` entry point on ``PYTHONPATH`` (nothing is installed). The models live in
``cli_fixture_model`` (imports torch), which ``list``/``info``/``plugins`` must never import.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from edifice import ArchConfig, ArchSpec, ConfigError, Paper, TensorSpec, field, hookimpl


@dataclasses.dataclass(kw_only=True)
class TinyCliConfig(ArchConfig):
    """Config of the tiny CLI test models."""

    arch: str = field("tiny_cli", "Registry name.")
    d_in: int = field(3, "Features of x.")
    d_model: int = field(4, "Hidden width.")
    d_out: int = field(2, "Output features.")

    def validate(self) -> None:
        """Sizes are positive."""
        self.check_positive("d_in", "d_model", "d_out")


_X = {"x": TensorSpec(("B", "T", "d_in"))}

TINY = ArchSpec(
    name="tiny_cli",
    family="test",
    distribution="edifice-cli-fixture",
    summary="Two linear layers with a frozen gain.",
    paper=None,
    config="cli_fixture_plugin:TinyCliConfig",
    model="cli_fixture_model:TinyCli",
    inputs=_X,
    outputs={"y": TensorSpec(("B", "T", "d_out"))},
    tiny={"d_model": 2},
    verification="property:tiny",
)

PAIR = ArchSpec(
    name="tiny_cli_pair",
    family="test",
    distribution="edifice-cli-fixture",
    summary="Returns a prediction and an auxiliary loss.",
    paper=Paper("Tiny networks", "A. Author", 2024, arxiv="2401.00001"),
    config="cli_fixture_plugin:TinyCliConfig",
    model="cli_fixture_model:TinyCliPair",
    inputs={**_X, "mask": TensorSpec(("B", "T"), "bool", "bool", optional=True, doc="valid positions")},
    outputs={"y": TensorSpec(("B", "T", "d_out")), "aux_loss": TensorSpec((), when="d_out > 1")},
    defaults={"d_out": 2},
    fixed=("d_out",),
    verification="oracle:eq. 1",
    causal=True,
    compile_fullgraph=False,
    batch_coupled=True,
    grad_exempt={"gain": "frozen on purpose"},
    reasons={"no_compile_fullgraph": "data-dependent branch", "batch_coupled": "aux loss averages the batch"},
)

NEEDY = dataclasses.replace(TINY, name="tiny_cli_needy", requires_blocks=("no_such_block",))


@hookimpl
def register_architectures(register: Any) -> None:
    """Register the test architectures."""
    for spec in (TINY, PAIR, NEEDY):
        register(spec)


def _hello(args: argparse.Namespace) -> int:
    print(f"hello {args.who}")
    return 0


def _boom(args: argparse.Namespace) -> int:
    raise ConfigError("boom: field 'x' is wrong")


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``edifice hello`` and ``edifice boom``."""
    cli.add_command("hello", help="say hello", configure=lambda p: p.add_argument("--who", default="world"), run=_hello)
    cli.add_command("boom", help="fail on purpose", configure=lambda p: None, run=_boom)
