"""The arena: fair sizing, skips with reasons, determinism, results files, and a 5-step run through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import edifice
import edifice_arena
from edifice.cli.main import main
from edifice.errors import ConfigError
from edifice_arena.progress import Progress
from edifice_arena.sizing import Entry, Skip, count_parameters, eligibility, size_entry
from edifice_arena.training import StepRecord

INSTALLED = set(edifice.list_architectures())
needs = pytest.mark.skipif(
    not {"decoder_only", "lstm"} <= INSTALLED, reason="decoder_only and lstm (attention, recurrent) are not installed"
)

# The cheapest arena that exercises everything: MQAR at T = 16, two pairs, 5 steps of batch 4.
TINY = ["--set", "seq_len=16", "--set", "num_kv_pairs=2", "--set", "vocab=32", "--params", "27000"]
BUDGET = ["--steps", "5", "--batch-size", "4"]


@needs
def test_five_step_arena_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "arena.json"
    plot = tmp_path / "arena.png"
    argv = ["arena", "--arch", "decoder_only,lstm,no_such_arch", *TINY, *BUDGET, "--seeds", "2"]
    code = main([*argv, "--json", str(out), "--csv", str(tmp_path / "arena.csv"), "--plot", str(plot)])
    printed, _ = capsys.readouterr()
    assert code == 0
    data = json.loads(out.read_text())
    assert data["task"]["task"] == "mqar" and data["task"]["chance"] == pytest.approx(1 / 16)
    assert {e["arch"] for e in data["entries"]} == {"decoder_only", "lstm"}
    for entry in data["entries"]:
        assert abs(entry["parameters"] / 27000 - 1) <= 0.10
        assert len(entry["runs"]) == 2 and len(entry["runs"][0]["losses"]) == 5
        assert 0.0 <= entry["metric"]["mean"] <= 1.0 and entry["metric"]["std"] >= 0.0
        assert entry["tokens_per_s"] > 0 and entry["state_bytes"] > 0 and entry["decode_ms_per_token"] > 0
        assert entry["peak_memory_bytes"] is None  # CPU: no allocator statistics
    assert data["skipped"] == [{"arch": "no_such_arch", "reason": data["skipped"][0]["reason"]}]
    assert "unknown architecture 'no_such_arch'" in data["skipped"][0]["reason"]
    assert "ACCURACY ± std" in printed and "no_such_arch: unknown architecture" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "arena.csv").read_text().startswith("rank,arch,parameters,d_model,lr,accuracy_mean")


@needs
def test_same_arena_twice_gives_the_same_results() -> None:
    fields = {
        "archs": ("lstm",),
        "task": "parity",
        "task_options": {"seq_len": 8},
        "params": 6800,
        "steps": 3,
        "batch_size": 4,
        "lr_sweep": (1e-3, 1e-2),
        "eval_batches": 1,
        "eval_batch_size": 4,
        "measure_decode": False,
    }
    first, second = edifice_arena.run(**fields), edifice_arena.run(**fields)
    for a, b in zip(first.entries[0].runs, second.entries[0].runs, strict=True):
        assert (a.losses, a.evaluations, a.metric) == (b.losses, b.evaluations, b.metric)
    assert first.entries[0].sweep == second.entries[0].sweep and set(first.entries[0].sweep) == {1e-3, 1e-2}
    assert first.results_table == second.results_table  # the costs table holds measurements, which vary
    assert json.loads(first.to_json())["entries"][0]["lr"] in (1e-3, 1e-2)


@needs
def test_entries_in_worker_processes_match_one_process() -> None:
    class Recorder(Progress):
        def __init__(self) -> None:
            self.steps: dict[str, list[int]] = {}
            self.done: list[str] = []

        def callback(self, label: str, steps: int) -> Callable[[StepRecord], None]:
            self.steps[label] = []
            return lambda record: self.steps[label].append(record.step)

        def finished(self, label: str, metric: float) -> None:
            self.done.append(label)

    fields = {
        "archs": ("lstm", "decoder_only"),
        "task": "parity",
        "task_options": {"seq_len": 8},
        "params": 6800,
        "tolerance": 0.5,
        "steps": 3,
        "batch_size": 4,
        "eval_batches": 1,
        "eval_batch_size": 4,
        "measure_decode": False,
    }
    progress = Recorder()
    alone = edifice_arena.run(**fields, jobs=1)
    together = edifice_arena.run(**fields, jobs=2, progress=progress)
    assert together.jobs == 2 and json.loads(together.to_json())["environment"]["jobs"] == 2
    for a, b in zip(alone.entries, together.entries, strict=True):
        assert a.arch == b.arch and b.runs[0].losses == pytest.approx(a.runs[0].losses, rel=1e-5)
    # Every worker's progress reached the parent, step by step, in order.
    assert progress.steps == {"lstm seed=0": [1, 2, 3], "decoder_only seed=0": [1, 2, 3]}
    assert sorted(progress.done) == ["decoder_only seed=0", "lstm seed=0"]


@pytest.mark.parametrize(
    "arch", sorted({"decoder_only", "lstm", "mamba_ssd", "gated_delta_net", "min_gru"} & INSTALLED)
)
@pytest.mark.parametrize("target", [30_000, 200_000])
def test_sizing_lands_within_ten_percent(arch: str, target: int) -> None:
    base = {"n_layers": 2, "vocab_size": 64, **({"head_dim": 16, "d_state": 16} if arch == "mamba_ssd" else {})}
    entry = size_entry(arch, target, base)
    assert isinstance(entry, Entry), entry
    assert abs(entry.deviation) <= 0.10
    assert entry.parameters == count_parameters(arch, entry.overrides)
    model = edifice.build(arch, **entry.overrides)
    assert entry.parameters == sum(p.numel() for p in model.parameters())  # meta count = real count


@needs
def test_sizing_skips_unreachable_targets_with_the_nearest_counts() -> None:
    skip = size_entry("lstm", 10, {"n_layers": 2, "vocab_size": 64})
    assert isinstance(skip, Skip)
    assert skip.reason.startswith("no width within 10% of 10 parameters (nearest d_model=4: ")


def test_eligibility_reasons() -> None:
    assert "unknown architecture 'no_such_arch'" in str(eligibility("no_such_arch"))
    if "bimamba" in INSTALLED:
        assert str(eligibility("bimamba")).startswith("not causal")
    if "snn" in INSTALLED:
        assert str(eligibility("snn")).startswith("not a token sequence model")
    for name in {"decoder_only", "lstm"} & INSTALLED:
        assert eligibility(name) is None


@needs
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["arena", "--arch", "no_such_arch", *TINY, *BUDGET], "no entry can run (no_such_arch: unknown architecture"),
        (["arena", "--task", "mqarr", *BUDGET], "is not a task; choose one of mqar"),
        (["arena", "--arch", "lstm", *TINY, "--params", "10", *BUDGET], "no entry can run (lstm: no width within 10%"),
        (["arena", "--arch", "lstm", "--set", "seq_len=15", *BUDGET], "task mqar: field 'seq_len'=15 must be even"),
    ],
)
def test_bad_arguments_get_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--lr", "-1"], ["--seeds", "x"], ["--suite", "nope"]])
def test_bad_numbers_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["arena", *argv])
    assert exit_info.value.code == 2
    assert "edifice arena: error: argument" in capsys.readouterr().err


def test_config_validates_itself() -> None:
    with pytest.raises(ConfigError, match="set exactly one of 'params'"):
        edifice_arena.ArenaConfig(params=1000, d_model=64)
    with pytest.raises(ConfigError, match="field 'overrides'"):
        edifice_arena.ArenaConfig(archs=("lstm",), overrides={"gru": {}})
    with pytest.raises(ConfigError, match="field 'schedule'"):
        edifice_arena.ArenaConfig(schedule="step")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arena", "--device", "cuda", "--steps", "1"]) == 2
    assert "field 'device'='cuda' asks for CUDA" in capsys.readouterr().err


def test_the_suites_follow_their_documented_protocols() -> None:
    from edifice_arena.suites import ZOOLOGY_GRID, ZOOLOGY_WIDTHS, suite

    (default,) = suite("default")
    assert default.task == "mqar" and default.task_options == {"seq_len": 32, "num_kv_pairs": 4, "vocab": 64}
    assert (default.params, default.steps, default.batch_size, default.jobs) == (100_000, 600, 32, 0)
    zoology = suite("zoology")
    assert len(zoology) == len(ZOOLOGY_GRID) * len(ZOOLOGY_WIDTHS) == 9
    points = {(c.task_options["seq_len"], c.task_options["num_kv_pairs"], c.d_model) for c in zoology}
    assert points == {(t, p, w) for t, p in ZOOLOGY_GRID for w in ZOOLOGY_WIDTHS}
    assert all(c.params is None and c.task_options["vocab"] == 8192 and c.n_layers == 2 for c in zoology)
    assert all(c.overrides["attention"] == {"n_heads": 1} for c in zoology)  # one head, as the paper's attention
    with pytest.raises(ConfigError, match="nope"):
        suite("nope")
