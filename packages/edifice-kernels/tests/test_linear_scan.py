"""The linear recurrence and the log-space scan against their references: states, gradients, initial state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

pytest.importorskip("triton")

from edifice import ops
from edifice.ops.log_scan import log_scan_reference
from edifice.ops.recurrence import linear_recurrence_reference
from edifice_kernels.linear_scan import linear_recurrence, log_scan

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(
    log: bool, B: int, T: int, state: tuple[int, ...], decay: tuple[int, ...], initial: bool, dtype: torch.dtype
) -> dict[str, Any]:
    """Decays in (0.05, 0.95) (their logs for the log scan), inputs (positive for the log scan), an initial state."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(B, T, *decay, generator=gen) * 0.9 + 0.05
    b = torch.randn(B, T, *state, generator=gen)
    h0 = torch.randn(B, *state, generator=gen) if initial else None
    if log:
        a, b = a.log(), b  # log b may be any real: b = exp(log b) > 0
        return {"log_a": a.to(DEVICE, dtype), "log_b": b.to(DEVICE, dtype),
                "log_initial": None if h0 is None else h0.to(DEVICE, dtype)}  # fmt: skip
    return {"a": a.to(DEVICE, dtype), "b": b.to(DEVICE, dtype), "initial": None if h0 is None else h0.to(DEVICE, dtype)}


CASES = [
    (7, (5,), (5,), True, torch.float32),
    (1, (5,), (5,), True, torch.float32),  # the decode step
    (33, (2, 3), (2, 1), True, torch.float32),  # one decay per head, broadcast over the state
    (40, (5,), (5,), False, torch.float32),
    (33, (5,), (5,), True, torch.bfloat16),
]


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize(("T", "state", "decay", "initial", "dtype"), CASES)
def test_linear_recurrence_matches_the_reference(
    compare_with_reference: Callable[..., None], T: int, state: Any, decay: Any, initial: bool, dtype: torch.dtype
) -> None:
    inputs = _inputs(False, 2, T, state, decay, initial, dtype)
    compare_with_reference(linear_recurrence, linear_recurrence_reference, inputs, dtype)


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize(("T", "state", "decay", "initial", "dtype"), CASES)
def test_log_scan_matches_the_reference(
    compare_with_reference: Callable[..., None], T: int, state: Any, decay: Any, initial: bool, dtype: torch.dtype
) -> None:
    inputs = _inputs(True, 2, T, state, decay, initial, dtype)
    compare_with_reference(log_scan, log_scan_reference, inputs, dtype)


# --- GPU: through op dispatch at the odd shapes, and the decode step in a CUDA graph -----------------------

GPU_SHAPES = [(1, (60,), (60,)), (63, (128,), (128,)), (130, (4, 60), (4, 1)), (130, (2, 128), (2, 128))]


@pytest.mark.gpu
@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("log", [False, True], ids=["linear_recurrence", "log_scan"])
@pytest.mark.parametrize(("T", "state", "decay"), GPU_SHAPES)
def test_scans_dispatch_on_gpu(
    compare_with_reference: Callable[..., None], dtype: torch.dtype, log: bool, T: int, state: Any, decay: Any
) -> None:
    inputs = _inputs(log, 3, T, state, decay, True, dtype)
    name = "log_scan" if log else "linear_recurrence"
    assert ops.selected(name, **inputs) == f"triton_{name}"
    reference = log_scan_reference if log else linear_recurrence_reference
    compare_with_reference(ops.get_op(name), reference, inputs, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("log", [False, True], ids=["linear_recurrence", "log_scan"])
def test_decode_step_captures_in_a_cuda_graph(log: bool) -> None:
    """One T = 1 step that updates a persistent fp32 state in place, replayed from a CUDA graph."""
    inputs = _inputs(log, 32, 1, (256,), (256,), True, torch.float32)
    a, b, h = (v.clone() for v in inputs.values())
    op = ops.log_scan if log else ops.linear_recurrence
    reference = log_scan_reference if log else linear_recurrence_reference

    def step() -> None:
        h.copy_(op(a, b, h)[:, 0])

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        step()
    want = h.clone()
    for _ in range(3):
        want = reference(a, b, want)[:, 0]
        graph.replay()
    torch.testing.assert_close(h, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("log", [False, True], ids=["linear", "log"])
def test_the_initial_state_and_output_may_be_modified_in_place_after_the_call(
    assert_in_place_allowed: Callable[..., None], log: bool, dtype: torch.dtype
) -> None:
    # Decoding carries h in place; the kernel once returned a view made inside forward (no in-place on the output)
    # and saved the output and the caller's initial state (the log scan's reference saves neither).
    inputs = _inputs(log, 2, 5, (3,), (3,), True, dtype)
    fn, ref = (log_scan, log_scan_reference) if log else (linear_recurrence, linear_recurrence_reference)
    targets = ["out0"] + (["log_initial"] if log else ["initial"] if dtype != torch.float32 else [])
    assert_in_place_allowed(fn, ref, inputs, targets, dtype)
