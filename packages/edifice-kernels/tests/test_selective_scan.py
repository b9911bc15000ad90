"""Mamba-1's selective scan against the op's reference: output, final state and the gradient of every input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

pytest.importorskip("triton")

from edifice import ops
from edifice.ops.selective_scan import selective_scan_reference
from edifice_kernels.selective_scan import selective_scan

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ALL = ("D", "z", "delta_bias", "initial_state")


def _inputs(
    B: int, T: int, D: int, N: int, groups: int, dtype: torch.dtype, optional: tuple[str, ...] = ALL
) -> dict[str, Any]:
    """Mamba-like inputs: A = -exp(.) < 0, small Δ before the softplus; B/C shared (groups = 0) or in groups."""
    gen = torch.Generator().manual_seed(0)

    def rand(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*s, generator=gen) * scale).to(device=DEVICE, dtype=dtype)

    bc = (B, T, N) if groups == 0 else (B, T, groups, N)
    inputs: dict[str, Any] = {
        "u": rand(B, T, D),
        "delta": rand(B, T, D, scale=0.5),
        "A": -torch.rand(D, N, generator=gen).mul(2).add(0.1).to(DEVICE),  # fp32, as models keep it
        "B": rand(*bc),
        "C": rand(*bc),
    }
    inputs["D"] = torch.randn(D, generator=gen).to(DEVICE) if "D" in optional else None
    inputs["z"] = rand(B, T, D) if "z" in optional else None
    inputs["delta_bias"] = torch.randn(D, generator=gen).mul(0.3).to(DEVICE) if "delta_bias" in optional else None
    inputs["initial_state"] = torch.randn(B, D, N, generator=gen).to(DEVICE) if "initial_state" in optional else None
    return inputs


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize(
    ("T", "D", "N", "groups", "dtype", "optional", "softplus"),
    [
        (7, 5, 3, 0, torch.float32, ALL, True),
        (1, 5, 4, 0, torch.float32, ALL, True),  # the decode step
        (33, 3, 4, 0, torch.float32, ALL, True),  # three chunks
        (7, 4, 2, 2, torch.float32, ALL, True),  # groups of B/C
        (20, 3, 2, 0, torch.float32, (), False),  # nothing optional, no softplus
        (33, 3, 4, 0, torch.bfloat16, ALL, True),
    ],
)
def test_selective_scan_matches_the_reference(
    compare_with_reference: Callable[..., None],
    T: int,
    D: int,
    N: int,
    groups: int,
    dtype: torch.dtype,
    optional: tuple[str, ...],
    softplus: bool,
) -> None:
    inputs = _inputs(2, T, D, N, groups, dtype, optional)
    compare_with_reference(
        selective_scan, selective_scan_reference, inputs, dtype, delta_softplus=softplus, return_final_state=True
    )


# --- GPU: through op dispatch at the odd shapes, and the decode step in a CUDA graph -----------------------


@pytest.mark.gpu
@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("T", "D", "N", "groups"), [(1, 60, 16, 0), (63, 128, 16, 0), (130, 60, 16, 0), (130, 128, 64, 4)]
)
def test_selective_scan_dispatch_on_gpu(
    compare_with_reference: Callable[..., None], dtype: torch.dtype, T: int, D: int, N: int, groups: int
) -> None:
    inputs = _inputs(3, T, D, N, groups, dtype)
    assert ops.selected("selective_scan", **inputs) == "triton_selective_scan"
    compare_with_reference(ops.selective_scan, selective_scan_reference, inputs, dtype, return_final_state=True)


@pytest.mark.gpu
def test_decode_step_captures_in_a_cuda_graph() -> None:
    """One T = 1 step from a persistent fp32 state, written back in place, replayed from a CUDA graph."""
    inputs = _inputs(8, 1, 128, 16, 0, torch.float32)
    state = inputs.pop("initial_state").clone()

    def step() -> torch.Tensor:
        y, h = ops.selective_scan(**inputs, initial_state=state, return_final_state=True)
        state.copy_(h)
        return y

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        y = step()
    want_state = state.clone()
    for _ in range(3):
        want_y, want_state = selective_scan_reference(**inputs, initial_state=want_state, return_final_state=True)
        graph.replay()
        torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, want_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_state_bias_and_outputs_may_be_modified_in_place_after_the_call(
    assert_in_place_allowed: Callable[..., None], dtype: torch.dtype
) -> None:
    # The reference saves softplus(delta + delta_bias), never the bias itself; the kernel keeps its own copy (and of
    # the initial state, which the reference saves, so modifying it in place is an error there and not checked).
    inputs = _inputs(2, 5, 4, 3, 0, dtype)
    targets = ["delta_bias", "out0"]
    assert_in_place_allowed(selective_scan, selective_scan_reference, inputs, targets, dtype, return_final_state=True)
