"""``edifice list``, ``info`` and ``plugins`` run in a fresh interpreter without importing torch or any model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from edifice.cli.commands.plugins import TORCH_NOTE

# Runs ``python -m edifice ARGS`` (through runpy, exactly as -m does) and then reports the heavy modules loaded.
_RUN_AND_REPORT = """
import json, runpy, sys
sys.argv = ["edifice", *sys.argv[1:]]
try:
    runpy.run_module("edifice", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "cli_fixture_model", "safetensors", "numpy"))
print("HEAVY:" + json.dumps(heavy), file=sys.stderr)
sys.exit(code)
"""


def _run(args: list[str], env: dict[str, str], *, module: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edifice", *args] if module else [sys.executable, "-c", _RUN_AND_REPORT, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--json", "--family", "test"],
        ["info", "tiny_cli"],
        ["info", "tiny_cli_pair", "--json"],
        ["plugins"],
        ["plugins", "--json"],
        ["--help"],
    ],
)
def test_catalogue_commands_import_no_torch(args: list[str], plugin_env: dict[str, str]) -> None:
    result = _run(args, plugin_env)
    assert result.returncode == 0, result.stderr
    heavy = json.loads(result.stderr.rsplit("HEAVY:", 1)[1])
    assert heavy == []
    if args[0] != "--help":
        assert "tiny_cli" in result.stdout or "cli-fixture" in result.stdout


def test_entry_point_plugins_are_listed_with_failures(plugin_env: dict[str, str]) -> None:
    result = _run(["plugins", "--json"], plugin_env, module=True)
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["cli-fixture"]["status"] == "loaded"
    assert records["cli-fixture"]["version"] == "0.0.1"
    assert records["cli-fixture"]["architectures"] == ["tiny_cli", "tiny_cli_pair", "tiny_cli_needy"]
    assert records["broken"]["status"] == "failed"
    assert "edifice_cli_no_such_module" in records["broken"]["error"]
    assert "failed to load" in result.stderr  # the warning reaches the user


def test_plugins_reports_load_times_and_flags_a_plugin_that_imports_torch(heavy_plugin_env: dict[str, str]) -> None:
    result = _run(["plugins"], heavy_plugin_env, module=True)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert TORCH_NOTE in rows["heavy"]
    assert "torch" not in rows["cli-fixture"]
    assert re.search(r" \d+ ms ", rows["cli-fixture"])  # loaded from its entry point, so timed


def test_plugin_command_runs_from_the_entry_point(plugin_env: dict[str, str]) -> None:
    result = _run(["hello", "--who", "edifice"], plugin_env, module=True)
    assert (result.returncode, result.stdout) == (0, "hello edifice\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "no_such_net"], "edifice info: error: unknown architecture 'no_such_net'"),
        (["info", "gat"], "planned for edifice-graph, which is not released yet"),
        (["boom"], "edifice boom: error: boom: field 'x' is wrong"),
    ],
)
def test_library_errors_exit_2_without_traceback(args: list[str], message: str, plugin_env: dict[str, str]) -> None:
    result = _run(args, plugin_env, module=True)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
