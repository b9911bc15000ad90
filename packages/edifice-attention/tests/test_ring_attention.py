"""ring_attention: the online-softmax merge against its oracle, blockwise = dense causal attention, and a 2-process
gloo ring equal to full causal attention, forward and backward.

The gloo test is not a signature test on purpose: ``--edifice-mutate all`` reruns every signature test once per
mutated op, and the two worker processes (which import torch and edifice) take seconds each time; it calls no op.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import edifice
from edifice import ConfigError
from edifice.ops.attention import sdpa_naive
from edifice.testing import signature
from edifice.testing.tol import FP32, assert_close
from edifice_attention.ring_attention import blockwise_attention, merge_attention

TINY = edifice.get_spec("ring_attention").tiny


@signature("ring_attention")
def test_merge_equals_one_softmax_over_the_union() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, 9, dtype=torch.float64, generator=g)
    s[0, 0, 1, :4] = float("-inf")  # a query that saw no key in the first part
    s[0, 0, 2, :] = float("-inf")  # nor in either part
    v = torch.randn(2, 3, 9, 4, dtype=torch.float64, generator=g)

    def part(cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
        lse = torch.logsumexp(s[..., cols], -1)
        p = torch.nan_to_num((s[..., cols] - lse[..., None]).exp())
        return p @ v[:, :, cols], lse

    out, lse = merge_attention(*part(slice(0, 4)), *part(slice(4, 9)))
    want = torch.nan_to_num(s.softmax(-1)) @ v
    assert_close(out, want, FP32, name="merged output")
    assert_close(lse, torch.logsumexp(s, -1), FP32, name="merged lse")
    assert torch.isfinite(out).all()


@signature("ring_attention")
@pytest.mark.parametrize(("T", "chunks"), [(1, 3), (11, 3), (13, 4), (8, 1)])
def test_blockwise_equals_dense_causal_attention(T: int, chunks: int) -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, T, 8, dtype=torch.float64, generator=g) for _ in range(3))
    got = blockwise_attention(q, k, v, torch.arange(T), chunks, 8**-0.5)
    assert_close(got, sdpa_naive(q, k, v, causal=True), FP32, name="blockwise")


def test_model_equals_decoder_only_with_the_same_weights() -> None:
    torch.manual_seed(0)
    ring = edifice.build("ring_attention", **TINY).eval()
    plain = edifice.build("decoder_only", **{k: v for k, v in TINY.items() if k != "num_chunks"}).eval()
    plain.load_state_dict(ring.state_dict())
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(ring(input_ids=ids), plain(input_ids=ids), FP32, name="ring_attention vs decoder_only")
        state = ring.init_state(2)
        steps = [ring.step(ids[:, :4], state)[0]] + [ring.step(ids[:, t : t + 1], state)[0] for t in range(4, 11)]
        assert_close(torch.cat(steps, 1), ring(input_ids=ids), FP32, name="step vs forward")


_WORKER = """
import pickle, sys
import torch, torch.distributed as dist
import edifice
from edifice_attention.ring_attention import ring_attention

rank, world, init_file, out, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
if backend == "nccl":
    torch.cuda.set_device(device)
torch.set_num_threads(1)
dist.init_process_group(backend, init_method="file://" + init_file, rank=rank, world_size=world)
g = torch.Generator().manual_seed(0)
q, k, v, do = (torch.randn(2, 3, 10, 8, dtype=torch.float64, generator=g).to(device) for _ in range(4))
mine = slice(rank * 10 // world, (rank + 1) * 10 // world)
q_r, k_r, v_r = (t[:, :, mine].clone().requires_grad_() for t in (q, k, v))
y = ring_attention(q_r, k_r, v_r)
y.backward(do[:, :, mine])
torch.manual_seed(0)
model = edifice.build("ring_attention", **edifice.get_spec("ring_attention").tiny).double().eval().shard_over()
model = model.to(device)
ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1)).to(device)
with torch.no_grad():
    logits = model(input_ids=ids[:, mine])
result = {"out": y.detach(), "dq": q_r.grad, "dk": k_r.grad, "dv": v_r.grad, "logits": logits}
result = {key: value.cpu() for key, value in result.items()}
with open(out + "/rank%d.pkl" % rank, "wb") as f:
    pickle.dump(result, f)
dist.destroy_process_group()
"""


def _ring_equals_full_causal_attention(tmp_path: Path, backend: str) -> None:
    """Two ranks (gloo on CPU or NCCL on two GPUs) against one-process dense causal attention and the whole model."""
    world = 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(world), str(tmp_path / "init"), str(tmp_path), backend]
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(r), *args], env=env) for r in range(world)]
    try:
        codes = [p.wait(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("ring_attention gloo workers timed out")
    assert codes == [0] * world, f"gloo workers exited with {codes}"
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(world)]
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(2, 3, 10, 8, dtype=torch.float64, generator=g).requires_grad_() for _ in range(4))
    want = sdpa_naive(q, k, v, causal=True)
    want.backward(do.detach())
    cat = {key: torch.cat([r[key] for r in results], dim=2) for key in ("out", "dq", "dk", "dv")}
    assert_close(cat["out"], want.detach(), FP32, name="ring forward")
    assert_close(cat["dq"], q.grad, FP32, name="dq")
    assert_close(cat["dk"], k.grad, FP32, name="dk")
    assert_close(cat["dv"], v.grad, FP32, name="dv")
    torch.manual_seed(0)
    model = edifice.build("ring_attention", **TINY).double().eval()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids)
    assert_close(torch.cat([r["logits"] for r in results], dim=1), full, FP32, name="sharded model vs one process")


def test_two_process_gloo_ring_equals_full_causal_attention(tmp_path: Path) -> None:
    _ring_equals_full_causal_attention(tmp_path, "gloo")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_nccl_ring_equals_full_causal_attention(tmp_path: Path) -> None:
    _ring_equals_full_causal_attention(tmp_path, "nccl")


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="num_chunks"):
        edifice.build("ring_attention", num_chunks=0)
    with pytest.raises(ConfigError, match="window"):
        edifice.build("ring_attention", window=4)
