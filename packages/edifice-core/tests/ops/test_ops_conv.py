"""edifice.ops.causal_conv1d: vs the tap loop, vs nn.Conv1d, chunked prefill and decoding through the state."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from edifice import ops
from edifice.ops.conv import causal_conv1d_naive, causal_conv1d_reference

TOL = 1e-5
B, C = 2, 5


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("T", "K", "bias", "state"),
    [(1, 4, True, True), (7, 4, False, False), (63, 3, True, False), (7, 1, True, False), (2, 5, True, True)],
)
def test_reference_matches_naive(T: int, K: int, bias: bool, state: bool, agree: Any) -> None:
    x, w = randn(B, T, C, seed=0), randn(C, K, seed=1)
    b = randn(C, seed=2) if bias else None
    s = randn(B, C, K - 1, seed=3) if state else None
    agree(causal_conv1d_reference, causal_conv1d_naive, x, w, b, s, atol=TOL, rtol=TOL)
    torch.testing.assert_close(ops.causal_conv1d(x, w, b, s), causal_conv1d_reference(x, w, b, s), atol=0, rtol=0)


@pytest.mark.parametrize("K", [1, 2, 4])
def test_matches_padded_nn_conv1d(K: int) -> None:
    T = 9
    conv = nn.Conv1d(C, C, K, groups=C, padding=K - 1)
    x = randn(B, T, C, seed=4)
    want = conv(x.transpose(1, 2))[..., :T].transpose(1, 2)  # pad both sides, keep the causal part
    got = ops.causal_conv1d(x, conv.weight.detach().squeeze(1), conv.bias.detach())
    torch.testing.assert_close(got, want.detach(), atol=TOL, rtol=TOL)


def test_chunked_prefill_and_decoding_reproduce_the_full_pass() -> None:
    K, T = 4, 11
    x, w, b = randn(B, T, C, seed=5), randn(C, K, seed=6), randn(C, seed=7)
    full = ops.causal_conv1d(x, w, b)
    state = None
    outs = []
    for chunk in x.split([2, 1, 1, 5, 1, 1], dim=1):  # chunks shorter and longer than K-1
        outs.append(ops.causal_conv1d(chunk, w, b, state))
        state = ops.causal_conv1d_state(chunk, state, K)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=TOL, rtol=TOL)
    torch.testing.assert_close(state, x[:, -(K - 1) :].transpose(1, 2), atol=0, rtol=0)


def test_state_edge_cases() -> None:
    x = randn(B, 2, C, seed=8)
    assert ops.causal_conv1d_state(x, None, 1).shape == (B, C, 0)
    history = randn(B, C, 4, seed=9)
    state = ops.causal_conv1d_state(x, history, 5)  # T=2 < K-1=4: two inputs of the history survive
    torch.testing.assert_close(state, torch.cat([history[..., 2:], x.transpose(1, 2)], -1), atol=0, rtol=0)
    assert torch.equal(ops.causal_conv1d_state(x, None, 4)[..., 0], torch.zeros(B, C))


def test_bf16(relative_l2: Any) -> None:
    x, w, b = randn(B, 7, C, seed=10), randn(C, 4, seed=11), randn(C, seed=12)
    out = ops.causal_conv1d(x.bfloat16(), w, b)  # fp32 weights are cast to the input's dtype
    assert out.dtype == torch.bfloat16
    assert relative_l2(out, ops.causal_conv1d(x, w, b)) <= 2e-2


@pytest.mark.parametrize(
    ("x", "w", "b", "s", "match"),
    [
        (torch.zeros(2, 5), torch.zeros(5, 4), None, None, r"x must be \[B, T, C\] \(3-D\), got shape \[2, 5\]"),
        (torch.zeros(2, 3, 5), torch.zeros(4, 4), None, None, r"weight must be \[C, K\] with C=5"),
        (torch.zeros(2, 3, 5), torch.zeros(5, 4), torch.zeros(4), None, r"bias must be \[C\] = \[5\]"),
        (torch.zeros(2, 3, 5), torch.zeros(5, 4), None, torch.zeros(2, 5, 4), r"initial_state must be .* \[2, 5, 3\]"),
    ],
)
def test_invalid_arguments_raise_clear_errors(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, s: torch.Tensor | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ops.causal_conv1d(x, w, b, s)


def test_invalid_state_arguments_raise_clear_errors() -> None:
    x = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        ops.causal_conv1d_state(x, None, 0)
    with pytest.raises(ValueError, match=r"initial_state must be \[B, C, K-1\] = \[2, 5, 3\]"):
        ops.causal_conv1d_state(x, torch.zeros(2, 5, 2), 4)
    with pytest.raises(TypeError, match="weight must be a floating-point"):
        ops.causal_conv1d(x, torch.zeros(5, 4, dtype=torch.long))
