"""``edifice train``: one-line errors, a text file with resume, and 2 processes (gloo) equal to 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edifice
from edifice.cli.main import main

pytestmark = pytest.mark.skipif(
    "decoder_only" not in edifice.list_architectures(), reason="decoder_only (edifice-attention) is not installed"
)

# A tiny causal model on a tiny task: the cheapest run that still exercises every part of the loop.
_RUN = ["train", "decoder_only", "--tiny", "--task", "parity", "--seq-len", "16", "--batch-size", "8", "--steps", "4"]


def _losses(path: Path) -> list[float]:
    return [record["loss"] for record in json.loads(path.read_text())["records"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "no_such_arch", "--task", "parity"], "unknown architecture 'no_such_arch'"),
        ([*_RUN, "--steps", "0"], "field 'steps'=0 must be an integer >= 1"),
        ([*_RUN, "--batch-size", "6", "--grad-accum", "4"], "field 'batch_size'=6 must be divisible by grad_accum"),
        (["train", "decoder_only", "--text", "no/such/file.txt"], "text file 'no/such/file.txt' does not exist"),
        (["train", "decoder_only", "--task", "parity_bits"], "unknown task 'parity_bits'"),
        ([*_RUN, "--resume"], "--resume needs --checkpoint-dir"),
        ([*_RUN, "--precision", "fp8"], "field 'precision'='fp8' is not one of 'fp32', 'bf16'"),
        ([*_RUN, "--device", "gpu"], "--device 'gpu' is not a torch device"),
    ],
)
def test_bad_arguments_get_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edifice train: error: ") and "\n" not in err
    assert message in err


def test_text_file_training_resumes_exactly(tmp_path: Path) -> None:
    text = tmp_path / "fox.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 30)
    run = ["train", "decoder_only", "--tiny", "--text", str(text), "--seq-len", "12", "--batch-size", "4"]
    run += ["--steps", "4", "--lr", "3e-3"]
    whole = tmp_path / "whole"
    assert (
        main([*run, "--checkpoint-dir", str(whole), "--checkpoint-every", "2", "--json", str(tmp_path / "a.json")]) == 0
    )
    # An interrupted run: only the step-2 checkpoint survived.
    shutil.copytree(whole / "step-00000002", tmp_path / "cut" / "step-00000002")
    argv = [*run, "--checkpoint-dir", str(tmp_path / "cut"), "--resume", "--json", str(tmp_path / "b.json")]
    assert main([*argv, "--save", str(tmp_path / "model.safetensors")]) == 0
    assert _losses(tmp_path / "b.json") == _losses(tmp_path / "a.json")[2:]
    assert edifice.load(tmp_path / "model.safetensors").config.vocab_size == 256


# Each launch starts two Python processes that import torch: DDP runs in the default suite, FSDP2 in `slow`.
@pytest.mark.parametrize("parallel", ["ddp", pytest.param("fsdp2", marks=pytest.mark.slow)])
def test_two_processes_equal_one_process(parallel: str, tmp_path: Path) -> None:
    """2 gloo processes on the CPU, each taking half of every global batch, give the 1-process losses."""
    assert main([*_RUN, "--json", str(tmp_path / "one.json")]) == 0
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "edifice"]
    argv = [*launch, *_RUN, "--distributed", parallel, "--json", str(tmp_path / "two.json")]
    done = subprocess.run(
        argv, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two, one = _losses(tmp_path / "two.json"), _losses(tmp_path / "one.json")
    assert json.loads((tmp_path / "two.json").read_text())["world_size"] == 2
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)  # the same batches; only fp32 reduction order differs
