"""Causal depthwise conv1d against the op's reference: outputs, gradients of x, weight, bias and the initial state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

pytest.importorskip("triton")

from edifice import ops
from edifice.ops.conv import causal_conv1d_reference, causal_conv1d_state
from edifice_kernels.causal_conv1d import causal_conv1d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B: int, T: int, C: int, K: int, dtype: torch.dtype, bias: bool, state: bool) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)

    def rand(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen).to(device=DEVICE, dtype=dtype)

    return {
        "x": rand(B, T, C),
        "weight": rand(C, K),
        "bias": rand(C) if bias else None,
        "initial_state": rand(B, C, K - 1) if state else None,
    }


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize(
    ("T", "C", "K", "bias", "state", "dtype"),
    [
        (7, 5, 4, True, True, torch.float32),
        (1, 5, 4, True, True, torch.float32),  # the decode step
        (33, 3, 3, False, False, torch.float32),
        (5, 3, 1, True, True, torch.float32),  # K = 1: an empty state
        (33, 5, 4, True, True, torch.bfloat16),
    ],
)
def test_causal_conv1d_matches_the_reference(
    compare_with_reference: Callable[..., None], T: int, C: int, K: int, bias: bool, state: bool, dtype: torch.dtype
) -> None:
    inputs = _inputs(2, T, C, K, dtype, bias, state)
    compare_with_reference(causal_conv1d, causal_conv1d_reference, inputs, dtype)


def test_prefill_then_decode_steps_reproduce_the_full_sequence(assert_matches: Callable[..., None]) -> None:
    """The state the op defines carries a kernel prefill into kernel decode steps, as a full pass computes."""
    inputs = _inputs(2, 6, 5, 4, torch.float32, bias=True, state=True)
    x, w, b, s = inputs["x"], inputs["weight"], inputs["bias"], inputs["initial_state"]
    full = causal_conv1d(x, w, b, s)
    outs, state = [causal_conv1d(x[:, :3], w, b, s)], causal_conv1d_state(x[:, :3], s, 4)
    for t in range(3, 6):
        outs.append(causal_conv1d(x[:, t : t + 1], w, b, state))
        state = causal_conv1d_state(x[:, t : t + 1], state, 4)
    assert_matches(torch.cat(outs, 1), full, torch.float32, "prefill + decode steps")


# --- GPU: through op dispatch at the odd shapes, and the decode step in a CUDA graph -----------------------


@pytest.mark.gpu
@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("T", "C"), [(1, 60), (63, 128), (130, 60), (130, 1536)])
def test_causal_conv1d_dispatch_on_gpu(
    compare_with_reference: Callable[..., None], dtype: torch.dtype, T: int, C: int
) -> None:
    inputs = _inputs(3, T, C, 4, dtype, bias=True, state=True)
    assert ops.selected("causal_conv1d", **inputs) == "triton_causal_conv1d"
    compare_with_reference(ops.causal_conv1d, causal_conv1d_reference, inputs, dtype)


@pytest.mark.gpu
def test_decode_step_captures_in_a_cuda_graph() -> None:
    inputs = _inputs(4, 1, 128, 4, torch.float32, bias=True, state=True)
    static_x, static_s = inputs["x"].clone(), inputs["initial_state"].clone()
    w, b = inputs["weight"], inputs["bias"]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(2):
            ops.causal_conv1d(static_x, w, b, static_s)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_y = ops.causal_conv1d(static_x, w, b, static_s)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        static_x.copy_(torch.randn(static_x.shape, generator=gen))
        static_s.copy_(torch.randn(static_s.shape, generator=gen))
        graph.replay()
        torch.testing.assert_close(static_y, causal_conv1d_reference(static_x, w, b, static_s), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_state_and_output_may_be_modified_in_place_after_the_call(
    assert_in_place_allowed: Callable[..., None], dtype: torch.dtype
) -> None:
    # Callers carry their history in place (``state.copy_(causal_conv1d_state(...))``, Titans' ShortConvs); the
    # kernel once saved the caller's state for its backward and failed there on an H100 (titans MAC).
    inputs = _inputs(2, 5, 3, 4, dtype, bias=True, state=True)
    assert_in_place_allowed(causal_conv1d, causal_conv1d_reference, inputs, ["initial_state", "bias", "out0"], dtype)


def test_decode_steps_carrying_the_state_in_place_backpropagate(assert_matches: Callable[..., None]) -> None:
    inputs = _inputs(2, 4, 5, 4, torch.float32, bias=True, state=True)

    def run(fn: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x, w, s0 = (inputs[k].detach().clone().requires_grad_() for k in ("x", "weight", "initial_state"))
        state, ys = s0 * 1, []
        for t in range(x.shape[1]):
            ys.append(fn(x[:, t : t + 1], w, inputs["bias"], state))
            state.copy_(causal_conv1d_state(x[:, t : t + 1], state, 4))
        return torch.autograd.grad(torch.cat(ys, 1).square().sum(), (x, w, s0))

    for name, g, w in zip(("dx", "dweight", "dstate"), run(causal_conv1d), run(causal_conv1d_reference), strict=True):
        assert_matches(g, w, torch.float32, name)
