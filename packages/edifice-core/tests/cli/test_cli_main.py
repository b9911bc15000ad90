"""The CLI in-process: tables, JSON, summary numbers, plugin commands and error handling."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from types import ModuleType
from typing import Any

import pytest
import torch

from edifice import InputError, hookimpl
from edifice.cli.commands.summary import parse_assignment, summarize
from edifice.cli.main import main
from edifice.cli.output import fmt_count, table
from edifice.plugins import PluginWarning, get_registry
from edifice.testing import registered


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = _run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


# -- output helpers --------------------------------------------------------------------------------------------------
def test_table_aligns_columns() -> None:
    text = table(("A", "NUM", "NOTE"), [("long-name", 5, None), ("x", 1234, "two\nlines")], right=(1,))
    assert text.splitlines() == [
        "A           NUM  NOTE",
        "long-name     5  -",
        "x          1234  two lines",
    ]


@pytest.mark.parametrize(
    ("n", "text"), [(None, "n/a"), (999, "999"), (1234, "1,234 (1.23K)"), (2_500_000_000, "2,500,000,000 (2.5G)")]
)
def test_fmt_count(n: int | None, text: str) -> None:
    assert fmt_count(n) == text


# -- list ------------------------------------------------------------------------------------------------------------
def test_list_table_shows_name_family_distribution_flags_summary(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType
) -> None:
    code, out, _ = _run(capsys, "list", "--family", "test")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "FAMILY", "DISTRIBUTION", "FLAGS", "SUMMARY"]
    assert [row.split()[0] for row in rows] == ["tiny_cli", "tiny_cli_needy", "tiny_cli_pair"]
    pair = rows[2]
    assert pair.split()[:4] == ["tiny_cli_pair", "test", "edifice-cli-fixture", "causal,batch-coupled,no-fullgraph"]
    # Aligned: the summary column starts at the same offset in the header and in every row.
    start = header.index("SUMMARY")
    assert pair[start:] == "Returns a prediction and an auxiliary loss."
    assert rows[0][start:] == "Two linear layers with a frozen gain."


def test_list_json_is_sorted_and_complete(capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType) -> None:
    entries = _json(capsys, "list", "--pattern", "tiny_cli*")
    assert [e["name"] for e in entries] == ["tiny_cli", "tiny_cli_needy", "tiny_cli_pair"]
    pair = entries[2]
    assert pair["flags"]["causal"] is True
    assert pair["flags"]["compile_fullgraph"] is False
    assert set(pair) == {"name", "family", "distribution", "summary", "alias_of", "flags"}


@pytest.mark.parametrize(
    ("family", "message"),
    [
        ("graph", "'graph': it is planned for edifice-graph, which is not released yet"),
        ("tset", "unknown family 'tset'"),
        ("tset", "Did you mean 'test'"),
    ],
)
def test_list_unknown_family_exits_2(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType, family: str, message: str
) -> None:
    code, out, err = _run(capsys, "list", "--family", family)
    assert code == 2
    assert out == ""
    assert message in err


def test_list_fits_the_terminal_and_wide_keeps_whole_lines(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    _, out, _ = _run(capsys, "list", "--family", "test")
    assert max(len(line) for line in out.splitlines()) == 100
    assert out.splitlines()[3].endswith("…")  # tiny_cli_pair's summary, cut
    _, wide, _ = _run(capsys, "list", "--family", "test", "--wide")
    assert wide.splitlines()[3].endswith("Returns a prediction and an auxiliary loss.")
    monkeypatch.delenv("COLUMNS")
    _, piped, _ = _run(capsys, "list", "--family", "test")  # captured output is no terminal: whole lines
    assert piped == wide


# -- info ------------------------------------------------------------------------------------------------------------
def test_info_text_shows_paper_flags_reasons_tensors_and_fields(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType
) -> None:
    code, out, _ = _run(capsys, "info", "tiny_cli_pair")
    assert code == 0
    assert out.startswith("tiny_cli_pair: Returns a prediction and an auxiliary loss.\n")
    lines = [" ".join(line.split()) for line in out.splitlines()]
    for expected in [
        "paper A. Author (2024). Tiny networks. https://arxiv.org/abs/2401.00001",
        "distribution edifice-cli-fixture (plugin 'cli-fixture')",
        "verification oracle:eq. 1",
        "compile_fullgraph no data-dependent branch",
        "batch_coupled yes aux loss averages the batch",
        "causal yes -",
        "gain frozen on purpose",
        "x [B, T, d_in] float32 float -",
        "mask [B, T] bool bool optional; valid positions",
        "aux_loss [] float32 float when d_out > 1",
        "d_model int 4 Hidden width.",
        "d_out int 2 (fixed) Output features.",
    ]:
        assert expected in lines, expected


def test_info_lists_requirements(capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType) -> None:
    _, out, _ = _run(capsys, "info", "tiny_cli_needy")
    assert "requires      blocks no_such_block" in out
    assert "paper         -" in out


def test_info_json(capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType) -> None:
    data = _json(capsys, "info", "tiny_cli_pair")
    assert data["paper_link"] == "https://arxiv.org/abs/2401.00001"
    assert data["plugin"] == "cli-fixture"
    assert data["spec"]["reasons"]["batch_coupled"] == "aux loss averages the batch"
    assert [f["name"] for f in data["fields"]] == ["d_in", "d_model", "d_out"]
    assert data["fields"][1] == {"name": "d_model", "type": "int", "default": 4, "doc": "Hidden width."}


def test_info_unknown_architecture_exits_2(capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType) -> None:
    code, out, err = _run(capsys, "info", "tiny_clj")
    assert (code, out) == (2, "")
    assert err.startswith("edifice info: error: unknown architecture 'tiny_clj'. Did you mean 'tiny_cli'")


@pytest.mark.parametrize("command", ["info", "summary"])
def test_a_missing_config_module_is_one_line_naming_plugin_and_path(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType, command: str
) -> None:
    spec = dataclasses.replace(cli_plugin.TINY, name="tiny_cli_lost", config="cli_fixture_gone:TinyCliConfig")
    with registered(spec, name="cli-lost"):
        code, out, err = _run(capsys, command, "tiny_cli_lost")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith(
        f"edifice {command}: error: tiny_cli_lost: plugin 'cli-lost' (edifice-cli-fixture) gives the config path "
        "'cli_fixture_gone:TinyCliConfig', which cannot be imported: ModuleNotFoundError: No module named"
    )


# -- plugins ---------------------------------------------------------------------------------------------------------
class _Broken:
    @hookimpl
    def register_architectures(self, register: Any) -> None:
        raise RuntimeError("cannot register")


def test_plugins_table_and_json_show_status_counts_and_errors(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType
) -> None:
    registry = get_registry()
    with pytest.warns(PluginWarning, match="cannot register"):
        registry.register_plugin(_Broken(), "cli-broken")
    try:
        code, out, _ = _run(capsys, "plugins")
        records = {r["name"]: r for r in _json(capsys, "plugins")}
    finally:
        registry.unregister_plugin("cli-broken")
    assert code == 0
    rows = {line.split()[0]: " ".join(line.split()) for line in out.splitlines()[1:]}
    assert rows["cli-fixture"] == "cli-fixture loaded edifice-cli-fixture 0.0.1 3 0 0 0 - -"  # in-process: no load time
    assert rows["cli-broken"].startswith("cli-broken failed - - 0 0 0 0 - RuntimeError: cannot register")
    assert records["cli-fixture"]["architectures"] == ["tiny_cli", "tiny_cli_pair", "tiny_cli_needy"]
    assert records["cli-broken"]["status"] == "failed"


# -- summary ---------------------------------------------------------------------------------------------------------
needs_flop_counter = pytest.mark.usefixtures("warm_flop_counter")


def test_summary_without_flops_and_with_progress(capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType) -> None:
    data = _json(capsys, "summary", "tiny_cli", "--no-flops")
    assert data["flops"] is None and data["parameters"] == _expected(3, 4, 2, 16)["parameters"]
    steps: list[str] = []
    summarize("tiny_cli", flops=False, progress=steps.append)
    assert steps == ["importing torch", "building tiny_cli"]  # the FLOP count (the slow step) is announced when run


@needs_flop_counter
def test_summary_reports_progress_on_a_terminal(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = _run(capsys, "summary", "tiny_cli")
    assert code == 0 and out.startswith("tiny_cli (TinyCli)")
    assert err.splitlines() == [
        "edifice summary: importing torch ...",
        "edifice summary: building tiny_cli ...",
        "edifice summary: counting FLOPs (its first use imports torch._dynamo; --no-flops skips it) ...",
    ]


def _expected(d_in: int, d_model: int, d_out: int, tokens: int) -> dict[str, int]:
    """Parameters and forward FLOPs of TinyCli, counted by hand (a matmul [M, K] @ [K, N] costs 2*M*K*N)."""
    trainable = d_in * d_model + d_model + d_model * d_out + d_out
    return {
        "parameters": trainable + d_model,  # + the frozen gain
        "trainable": trainable,
        "flops": 2 * tokens * d_in * d_model + 2 * tokens * d_model * d_out,
    }


@pytest.mark.parametrize(
    ("args", "dims"),
    [
        ((), (3, 4, 2, 2, 8)),
        (("--set", "d_model=6", "--batch-size", "3", "--dim", "T=5"), (3, 6, 2, 3, 5)),
        (("--tiny",), (3, 2, 2, 2, 8)),
        (("--tiny", "--set", "d_model=5", "--set", "d_in=1"), (1, 5, 2, 2, 8)),
    ],
)
@needs_flop_counter
def test_summary_json_counts_parameters_shapes_and_flops(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType, args: tuple[str, ...], dims: tuple[int, ...]
) -> None:
    d_in, d_model, d_out, batch, steps = dims
    data = _json(capsys, "summary", "tiny_cli", *args)
    assert {k: data[k] for k in ("parameters", "trainable", "flops")} == _expected(d_in, d_model, d_out, batch * steps)
    assert data["config"]["d_model"] == d_model
    assert data["buffers"] == d_out
    assert data["inputs"] == {"x": {"shape": [batch, steps, d_in], "dtype": "float32"}}
    assert data["outputs"] == {"y": {"shape": [batch, steps, d_out], "dtype": "float32"}}
    assert [(m["name"], m["parameters"]) for m in data["modules"]] == [
        ("proj", d_in * d_model + d_model),
        ("out", d_model * d_out + d_out),
        ("(own parameters)", d_model),
    ]


@needs_flop_counter
def test_summary_table_and_structured_outputs(capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType) -> None:
    code, out, _ = _run(capsys, "summary", "tiny_cli_pair")
    assert code == 0
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[0] == "tiny_cli_pair (TinyCliPair), batch size 2"
    for expected in ["parameters 30", "trainable 26", "FLOPs 640", "x [2, 8, 3] float32", "y [2, 8, 2] float32"]:
        assert expected in lines, expected
    assert "aux_loss [] float32" in lines


@needs_flop_counter
def test_summary_reports_flops_as_unknown_when_the_counter_fails(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Refusing:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def __enter__(self) -> None:
            raise RuntimeError("no flop rule")

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(torch.utils.flop_counter, "FlopCounterMode", Refusing)
    data = _json(capsys, "summary", "tiny_cli")
    assert data["flops"] is None
    assert data["outputs"]["y"]["shape"] == [2, 8, 2]
    _, out, _ = _run(capsys, "summary", "tiny_cli")
    assert "FLOPs       n/a" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tiny_cli", "--set", "d_model=-1"), "field 'd_model'=-1 must be > 0"),
        (("tiny_cli", "--set", "d_modle=8"), "unknown option 'd_modle'"),
        (("tiny_cli", "--set", "d_model=big"), "field 'd_model' expects int, got str ('big')"),
        (("tiny_cli_pair", "--set", "d_out=3"), "field 'd_out' is fixed"),
        (("tiny_cli_needy",), "needs the block 'no_such_block'"),
        (("tiny_cli", "--dim", "T=2", "--dim", "Q=3"), "--dim Q is not a dimension of its inputs, which use T"),
        (("tiny_cli", "--dim", "B=3"), "(the batch size is --batch-size)"),
    ],
)
@needs_flop_counter
def test_summary_library_errors_exit_2(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType, args: tuple[str, ...], message: str
) -> None:
    code, out, err = _run(capsys, "summary", *args)
    assert (code, out) == (2, "")
    assert err.startswith("edifice summary: error: ")
    assert message in err


@needs_flop_counter
def test_summary_input_errors_from_the_forward_exit_2(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Any, x: torch.Tensor) -> torch.Tensor:
        raise InputError("tiny_cli: input 'x' expected [B, T, 3], got [2, 8, 4]")

    monkeypatch.setattr(importlib.import_module("cli_fixture_model").TinyCli, "forward", refuse)
    code, out, err = _run(capsys, "summary", "tiny_cli")
    assert (code, out) == (2, "")
    assert err == "edifice summary: error: tiny_cli: input 'x' expected [B, T, 3], got [2, 8, 4]\n"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("d_model=64", ("d_model", 64)),
        ("dropout=0.1", ("dropout", 0.1)),
        ("bias=true", ("bias", True)),
        ("window=null", ("window", None)),
        ("sizes=[2, 2]", ("sizes", [2, 2])),
        ("output=last", ("output", "last")),
        ("name=a=b", ("name", "a=b")),
        ("empty=", ("empty", "")),
    ],
)
def test_set_values_are_json_literals_or_strings(text: str, parsed: tuple[str, Any]) -> None:
    assert parse_assignment(text) == parsed


@pytest.mark.parametrize("text", ["d_model", "=3", "1x=3"])
def test_set_needs_key_equals_value(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        parse_assignment(text)


@pytest.mark.parametrize("args", [("--batch-size", "0"), ("--batch-size", "two"), ("--dim", "T=0"), ("--set", "x")])
def test_summary_bad_arguments_are_usage_errors(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType, args: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["summary", "tiny_cli", *args])
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err


# -- the command line as a whole -------------------------------------------------------------------------------------
def test_plugin_commands_run_and_library_errors_exit_2(
    capsys: pytest.CaptureFixture[str], cli_plugin: ModuleType
) -> None:
    assert _run(capsys, "hello", "--who", "you") == (0, "hello you\n", "")
    assert _run(capsys, "boom") == (2, "", "edifice boom: error: boom: field 'x' is wrong\n")


class _Clashing:
    @hookimpl
    def register_commands(self, cli: Any) -> None:
        for name in ("list", "bench", "extra"):
            cli.add_command(name, help="clash", configure=lambda p: None, run=lambda args: 7)


def test_plugin_commands_cannot_take_builtin_or_reserved_names(capsys: pytest.CaptureFixture[str]) -> None:
    registry = get_registry()
    registry.register_plugin(_Clashing(), "cli-clash")
    try:
        with pytest.warns(PluginWarning) as caught:
            assert main(["extra"]) == 7
        with pytest.warns(PluginWarning):
            code, out, _ = _run(capsys, "list")
        with pytest.warns(PluginWarning), pytest.raises(SystemExit):
            main(["bench"])
    finally:
        registry.unregister_plugin("cli-clash")
    assert sorted(str(w.message).split("'")[1] for w in caught) == ["bench", "list"]
    assert code == 0
    assert out.startswith("NAME")


def test_no_command_prints_help_and_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys)
    assert code == 0
    assert out.startswith("usage: edifice")
    for name in ("list", "info", "plugins", "summary"):
        assert f"    {name} " in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("edifice-core ")
