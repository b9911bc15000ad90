"""Causal depthwise conv: equals a left-padded nn.Conv1d(groups=C); stepping with state equals the full pass."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edifice.blocks.conv import CausalDepthwiseConv1d


@pytest.mark.parametrize("kernel_size", [1, 4])
def test_equals_left_padded_grouped_conv(kernel_size: int) -> None:
    torch.manual_seed(0)
    B, T, C = 2, 7, 5
    block = CausalDepthwiseConv1d(C, kernel_size)
    reference = nn.Conv1d(C, C, kernel_size, groups=C, padding=kernel_size - 1)
    with torch.no_grad():
        reference.weight.copy_(block.weight.unsqueeze(1))  # (C, 1, K)
        reference.bias.copy_(block.bias)  # type: ignore[union-attr]
    x = torch.randn(B, T, C)
    # padding=K-1 pads both sides; the first T outputs are the causal ones.
    expected = reference(x.transpose(1, 2))[..., :T].transpose(1, 2)
    torch.testing.assert_close(block(x), expected)


def test_step_by_step_and_chunks_equal_full_pass() -> None:
    torch.manual_seed(1)
    block = CausalDepthwiseConv1d(3, 4, bias=False)
    x = torch.randn(2, 9, 3)
    full = block(x)
    state = block.init_state(2)
    assert state.shape == (2, 3, 3)
    assert not state.any()
    outs = []
    for t in range(9):
        y, state = block.step(x[:, t : t + 1], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full)
    # The state is the last K-1 inputs, channels first.
    torch.testing.assert_close(state, x[:, -3:].transpose(1, 2))
    # Prefill of 5 then a chunk of 4 gives the same.
    state = block.init_state(2)
    y1, state = block.step(x[:, :5], state)
    y2, state = block.step(x[:, 5:], state)
    torch.testing.assert_close(torch.cat([y1, y2], 1), full)


def test_init_is_conv1d_default_and_meta_friendly() -> None:
    torch.manual_seed(2)
    block = CausalDepthwiseConv1d(64, 4)
    bound = 1 / math.sqrt(4)
    assert block.weight.abs().max() <= bound
    assert block.weight.std() > bound / 3
    with torch.device("meta"):
        meta = CausalDepthwiseConv1d(8, 3)
    assert meta.weight.is_meta
    assert meta(torch.empty(1, 4, 8, device="meta")).shape == (1, 4, 8)
    assert "kernel_size=3" in repr(meta)
    with pytest.raises(ValueError, match="channels and kernel_size must be > 0"):
        CausalDepthwiseConv1d(4, 0)
    with pytest.raises(ValueError, match=r"\[B, T, C\]"):
        block(torch.randn(2, 64))
