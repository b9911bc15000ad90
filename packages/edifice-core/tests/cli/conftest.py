"""Fixtures of the CLI tests: the test plugin, registered in-process or found through an entry point."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from edifice.plugins import get_registry

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables print whole lines unless a test sets ``COLUMNS`` itself (CI shells may export one, e.g. 80)."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def cli_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Register ``cli_fixture_plugin`` for one test."""
    monkeypatch.syspath_prepend(str(HERE))
    module = importlib.import_module("cli_fixture_plugin")
    registry = get_registry()
    registry.register_plugin(module, "cli-fixture", distribution="edifice-cli-fixture", version="0.0.1")
    yield module
    registry.unregister_plugin("cli-fixture")


@pytest.fixture(scope="session")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a subprocess that discovers the test plugin (and a broken one) through entry points."""
    site = tmp_path_factory.mktemp("site")
    dist_info = site / "edifice_cli_fixture-0.0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: edifice-cli-fixture\nVersion: 0.0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[edifice]\ncli-fixture = cli_fixture_plugin\nbroken = edifice_cli_no_such_module\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDIFICE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="session")
def heavy_plugin_env(plugin_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``plugin_env`` plus a plugin whose entry-point module imports torch at module level (what not to do).

    The ``torch`` it finds first is a stand-in module on ``PYTHONPATH``: detection only looks at ``sys.modules``, and
    the ``plugins`` command never touches torch, so the test need not pay for the real import (seconds).
    """
    site = tmp_path_factory.mktemp("heavy-site")
    (site / "torch.py").write_text('"""Stand-in for torch: the test only checks that loading imports it."""\n')
    (site / "edifice_cli_heavy.py").write_text("import torch  # at module level: every edifice command pays for it\n")
    dist_info = site / "edifice_cli_heavy-0.0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: edifice-cli-heavy\nVersion: 0.0.1\n")
    (dist_info / "entry_points.txt").write_text("[edifice]\nheavy = edifice_cli_heavy\n")
    return {**plugin_env, "PYTHONPATH": os.pathsep.join([str(site), plugin_env["PYTHONPATH"]])}


@pytest.fixture(scope="session")
def warm_flop_counter() -> None:
    """Pay once, in set-up, for the ``torch._dynamo`` import that ``FlopCounterMode`` triggers on first use (1-2 s)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        torch.ones(1, 1) @ torch.ones(1, 1)
