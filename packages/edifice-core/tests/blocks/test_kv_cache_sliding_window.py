"""The sliding-window ring buffer: constant size, in place, and attention through it equals full attention."""

from __future__ import annotations

import pytest
import torch

from edifice.blocks.attention import Attention
from edifice.blocks.kv_cache import DynamicKVCache, SlidingWindowKVCache, StaticKVCache
from edifice.blocks.rope import RotaryEmbedding
from edifice.testing.tol import FP32, assert_close

B, HK, D, W = 2, 2, 4, 3


def _attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(16, 4, n_kv_heads=HK, window=W, rope=RotaryEmbedding(4)).eval()


def _step_all(attn: Attention, x: torch.Tensor, chunks: list[int], cache: object, mask: torch.Tensor | None = None):
    """Feed ``x`` through ``attn`` in ``chunks`` with positions counting valid tokens (as the backbone does)."""
    outs, start = [], 0
    position = torch.zeros(B, dtype=torch.long)
    for t in chunks:
        m = None if mask is None else mask[:, start : start + t]
        offsets = torch.arange(t) if m is None else m.long().cumsum(-1) - 1
        positions = position[:, None] + offsets
        position = position + (t if m is None else m.sum(-1))
        outs.append(attn(x[:, start : start + t], mask=m, positions=positions, state=cache))
        start += t
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("chunks", [[1] * 9, [5, 1, 1, 2], [2, 4, 1, 2], [9]])
def test_ring_buffer_reproduces_full_sliding_window_attention(chunks: list[int]) -> None:
    attn = _attention()
    x = torch.randn(B, 9, 16, generator=torch.Generator().manual_seed(1))
    cache = SlidingWindowKVCache.empty(B, HK, D, W)
    pointers = [cache.keys.data_ptr(), cache.values.data_ptr(), cache.positions.data_ptr(), cache.valid.data_ptr()]
    with torch.no_grad():
        want = attn(x)
        got = _step_all(attn, x, chunks, cache)
    assert_close(got, want, FP32)
    assert cache.keys.shape == (B, HK, W + 1, D) and cache.window == W
    assert [cache.keys.data_ptr(), cache.values.data_ptr(), cache.positions.data_ptr(), cache.valid.data_ptr()] == (
        pointers
    )
    # The ring holds exactly the last W positions, the scratch slot nothing.
    assert sorted(cache.positions[0, :W].tolist()) == [6, 7, 8]
    assert cache.valid[:, :W].all() and not cache.valid[:, W].any()
    assert cache.written.tolist() == [9, 9]


def test_padding_inside_prompts_matches_a_static_cache() -> None:
    # Row 0 is left-padded, row 1 has pads in the middle of its prompt; then both decode past the window.
    attn = _attention(seed=2)
    x = torch.randn(B, 10, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(B, 10, dtype=torch.bool)
    mask[0, :2] = False
    mask[1, 3:5] = False
    chunks = [6, 1, 2, 1]
    ring = SlidingWindowKVCache.empty(B, HK, D, W)
    static = StaticKVCache.empty(B, HK, D, 10)
    with torch.no_grad():
        got = _step_all(attn, x, chunks, ring, mask)
        want = _step_all(attn, x, chunks, static, mask)
    assert_close(got[mask], want[mask], FP32)
    assert ring.written.tolist() == [8, 8]


def test_update_keeps_the_last_window_valid_keys() -> None:
    cache = SlidingWindowKVCache.empty(1, 1, 1, 2)
    keys = torch.arange(5.0).reshape(1, 1, 5, 1)
    valid = torch.tensor([[True, True, True, False, True]])
    cache.update(keys, keys, torch.tensor([0, 1, 2, 3, 3]), valid)
    ring = {
        int(p): float(k)
        for p, k, ok in zip(cache.positions[0], cache.keys[0, 0, :, 0], cache.valid[0], strict=True)
        if ok
    }
    assert ring == {2: 2.0, 3: 4.0}  # the last two valid keys; the padded one went to the scratch slot
    assert cache.written.tolist() == [4]


def test_growing_caches_fetch_what_they_store() -> None:
    k = torch.randn(B, HK, 3, D)
    for cache in (DynamicKVCache.empty(B, HK, D), StaticKVCache.empty(B, HK, D, 5)):
        keys, values, positions, mask = cache.update_and_fetch(k, k, torch.arange(3))
        assert keys is cache.keys and values is cache.values and positions is cache.positions
        assert torch.equal(mask, cache.attention_mask())


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="window > 0"):
        SlidingWindowKVCache.empty(B, HK, D, 0)
    cache = SlidingWindowKVCache.empty(B, HK, D, W)
    with pytest.raises(ValueError, match="KV cache update expects keys"):
        cache.update_and_fetch(torch.zeros(B, HK + 1, 2, D), torch.zeros(B, HK + 1, 2, D), torch.arange(2))
    with pytest.raises(ValueError, match="positions"):
        cache.update(torch.zeros(B, HK, 2, D), torch.zeros(B, HK, 2, D), torch.arange(3))


def test_ring_cache_attention_starts_its_own_ring() -> None:
    # ring_cache=True: init_state gives the constant-size ring whatever max_len asks, and decoding from it equals
    # the windowed forward; without a causal window the flag is refused by name.
    torch.manual_seed(0)
    attn = Attention(16, 4, n_kv_heads=HK, window=W, rope=RotaryEmbedding(4), ring_cache=True).eval()
    cache = attn.init_state(B, max_len=64)
    assert isinstance(cache, SlidingWindowKVCache) and cache.window == W and cache.keys.shape == (B, HK, W + 1, D)
    x = torch.randn(B, 7, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(_step_all(attn, x, [3, 1, 1, 2], cache), attn(x), FP32)
    with pytest.raises(ValueError, match="ring_cache=True needs a causal window"):
        Attention(16, 4, ring_cache=True)
    with pytest.raises(ValueError, match="causal=False"):
        Attention(16, 4, window=W, causal=False, ring_cache=True)
