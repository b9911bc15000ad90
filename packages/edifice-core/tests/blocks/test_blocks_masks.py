"""Boolean masks (True = attend) against explicit loops, and against SDPA's own causal flag."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edifice.blocks.masks import (
    causal_mask,
    combine_masks,
    lengths_to_mask,
    padding_mask,
    position_mask,
    segment_mask,
    sliding_window_mask,
)


def _loop_mask(q_len: int, kv_len: int, window: int | None = None) -> torch.Tensor:
    out = torch.zeros(q_len, kv_len, dtype=torch.bool)
    for r in range(q_len):
        i = kv_len - q_len + r  # absolute position of query row r
        for j in range(kv_len):
            out[r, j] = j <= i and (window is None or i - j < window)
    return out


@pytest.mark.parametrize(("q_len", "kv_len"), [(5, 5), (2, 6), (1, 4), (0, 3)])
def test_causal_mask_matches_loop(q_len: int, kv_len: int) -> None:
    mask = causal_mask(q_len, kv_len)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, _loop_mask(q_len, kv_len))


@pytest.mark.parametrize(("q_len", "kv_len", "window"), [(6, 6, 1), (6, 6, 3), (3, 7, 2), (4, 4, 10)])
def test_sliding_window_matches_loop(q_len: int, kv_len: int, window: int) -> None:
    assert torch.equal(sliding_window_mask(q_len, window, kv_len), _loop_mask(q_len, kv_len, window))


def test_true_means_attend_as_in_sdpa() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(5)), expected)


def test_position_and_segment_masks_for_packed_and_padded_batches() -> None:
    # Left padding: row 1 starts two steps later; its positions are shifted.
    q_pos = torch.tensor([[0, 1, 2, 3], [-2, -1, 0, 1]])
    mask = position_mask(q_pos, q_pos, window=2)
    assert mask.shape == (2, 4, 4)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                d = (q_pos[b, i] - q_pos[b, j]).item()
                assert mask[b, i, j].item() == (0 <= d < 2)
    segments = torch.tensor([0, 0, 1, 1, 1])
    packed = segment_mask(segments, segments) & causal_mask(5)
    assert packed.tolist()[3] == [False, False, True, True, False]


def test_padding_lengths_and_combine() -> None:
    attention_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pad = padding_mask(attention_mask)
    assert pad.shape == (2, 1, 1, 3)
    assert pad.dtype == torch.bool
    assert torch.equal(pad[:, 0, 0], lengths_to_mask(torch.tensor([2, 3]), 3))
    both = combine_masks(causal_mask(3), None, pad)
    assert both is not None
    assert both.shape == (2, 1, 3, 3)
    assert both[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert combine_masks(None, None) is None
    with pytest.raises(TypeError, match="must be bool"):
        combine_masks(causal_mask(2), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"expected attention_mask \[B, T\]"):
        padding_mask(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool or integer"):
        padding_mask(torch.ones(1, 3))
    with pytest.raises(ValueError, match="need 0 <= q_len <= kv_len"):
        causal_mask(4, 2)
    with pytest.raises(ValueError, match="window must be a positive"):
        sliding_window_mask(3, 0)
    with pytest.raises(ValueError, match=r"expected lengths \[B\]"):
        lengths_to_mask(torch.ones(1, 2), 3)
