"""GPU checks of the training loop: the pipelined CUDA step equals the CPU one, resumes, runs bf16, and trains under
NCCL with DDP and FSDP2 (a world of one process per visible GPU, up to two) to the single-process losses."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edifice
from edifice_arena.corpus import TokenWindows
from edifice_arena.training import TrainConfig, Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif("decoder_only" not in edifice.list_architectures(), reason="needs edifice-attention"),
]


def _source() -> TokenWindows:
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog; " * 40, dtype=np.uint8)
    return TokenWindows(text, 256, 16, seed=3, name="fox.txt")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return edifice.build("decoder_only", d_model=32, n_layers=2, n_heads=2, vocab_size=256)


def _losses(device: str, **changes: object) -> list[float]:
    config = TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=1, device=device, **changes)  # type: ignore[arg-type]
    return [r.loss for r in Trainer(_model(), _source(), config).fit()]


def test_cuda_training_equals_cpu_resumes_and_runs_bf16(tmp_path: Path) -> None:
    cpu, cuda = _losses("cpu"), _losses("cuda", checkpoint_dir=str(tmp_path), checkpoint_every=2)
    assert cuda == pytest.approx(cpu, rel=1e-3)  # other kernels, other rounding
    resumed = Trainer(_model(), _source(), TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=1, device="cuda"))
    resumed.load_checkpoint(tmp_path / "step-00000002")
    assert [r.loss for r in resumed.fit()] == pytest.approx(cuda[2:], rel=1e-5)
    bf16 = _losses("cuda", precision="bf16")
    assert all(math.isfinite(x) for x in bf16) and bf16 == pytest.approx(cuda, rel=3e-2)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_nccl_world_equals_one_process(parallel: str, tmp_path: Path) -> None:
    processes = min(2, torch.cuda.device_count())
    run = ["train", "decoder_only", "--tiny", "--task", "parity", "--seq-len", "16", "--batch-size", "8"]
    run += ["--steps", "4", "--device", "cuda"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    for argv, out in (([*run], "one.json"), ([*run, "--distributed", parallel], "many.json")):
        prefix = [sys.executable] if out == "one.json" else launch
        done = subprocess.run(
            [*prefix, "-m", "edifice", *argv, "--json", str(tmp_path / out)],
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    one, many = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "many.json"))
    assert many["world_size"] == processes
    losses = [r["loss"] for r in many["records"]]
    assert losses == pytest.approx([r["loss"] for r in one["records"]], rel=1e-4)
