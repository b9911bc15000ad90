"""Dynamic and static KV caches: same contents, in-place static writes, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree

from edifice.blocks.kv_cache import DynamicKVCache, StaticKVCache
from edifice.errors import InputError

B, HK, D = 2, 3, 4


def _chunks(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Three updates of 3, 1 and 2 positions, with one padded slot in the first."""
    g = torch.Generator().manual_seed(seed)
    out, start = [], 0
    for t in (3, 1, 2):
        k = torch.randn(B, HK, t, D, generator=g)
        v = torch.randn(B, HK, t, D + 1, generator=g)
        pos = torch.arange(start, start + t).expand(B, t).clone()
        valid = torch.ones(B, t, dtype=torch.bool)
        if start == 0:
            valid[1, 0] = False
        out.append((k, v, pos, valid))
        start += t
    return out


def test_dynamic_cache_concatenates_in_order() -> None:
    cache = DynamicKVCache.empty(B, HK, D, v_head_dim=D + 1)
    chunks = _chunks()
    for k, v, pos, valid in chunks:
        cache.update(k, v, pos, valid)
    assert torch.equal(cache.keys, torch.cat([c[0] for c in chunks], dim=2))
    assert torch.equal(cache.values, torch.cat([c[1] for c in chunks], dim=2))
    assert cache.positions.tolist() == [list(range(6))] * B
    assert cache.valid.tolist() == [[True] * 6, [False] + [True] * 5]
    assert cache.attention_mask().shape == (B, 1, 1, 6)


def test_static_cache_matches_dynamic_and_writes_in_place() -> None:
    dynamic = DynamicKVCache.empty(B, HK, D, v_head_dim=D + 1)
    static = StaticKVCache.empty(B, HK, D, 8, v_head_dim=D + 1)
    pointers = [static.keys.data_ptr(), static.values.data_ptr(), static.positions.data_ptr()]
    for k, v, pos, valid in _chunks():
        dynamic.update(k, v, pos, valid)
        static.update(k, v, pos, valid)
    assert [static.keys.data_ptr(), static.values.data_ptr(), static.positions.data_ptr()] == pointers
    assert int(static.length) == 6
    assert static.max_len == 8
    assert torch.equal(static.keys[:, :, :6], dynamic.keys)
    assert torch.equal(static.values[:, :, :6], dynamic.values)
    assert torch.equal(static.positions[:, :6], dynamic.positions)
    assert torch.equal(static.valid[:, :6], dynamic.valid)
    assert not static.valid[:, 6:].any(), "unwritten slots must stay masked out"


def test_positions_broadcast_and_default_validity() -> None:
    cache = StaticKVCache.empty(B, HK, D, 4)
    cache.update(torch.zeros(B, HK, 2, D), torch.zeros(B, HK, 2, D), torch.tensor([5, 6]))
    assert cache.positions[:, :2].tolist() == [[5, 6], [5, 6]]
    assert cache.valid[:, :2].all()


def test_static_overflow_and_bad_shapes_raise() -> None:
    cache = StaticKVCache.empty(B, HK, D, 2)
    cache.update(torch.zeros(B, HK, 2, D), torch.zeros(B, HK, 2, D), torch.arange(2))
    with pytest.raises(InputError, match=r"2 positions cached \+ 1 new > its size max_len=2"):
        cache.update(torch.zeros(B, HK, 1, D), torch.zeros(B, HK, 1, D), torch.arange(1))
    cache = StaticKVCache.empty(B, HK, D, 2)
    with pytest.raises(InputError, match="max_len=2"):
        cache.update(torch.zeros(B, HK, 3, D), torch.zeros(B, HK, 3, D), torch.arange(3))
    with pytest.raises(ValueError, match=r"keys \[2, 3, 1, 4\]"):
        cache.update(torch.zeros(B, HK + 1, 1, D), torch.zeros(B, HK + 1, 1, D), torch.arange(1))
    with pytest.raises(ValueError, match="positions"):
        cache.update(torch.zeros(B, HK, 1, D), torch.zeros(B, HK, 1, D), torch.arange(2))
    with pytest.raises(ValueError, match="max_len > 0"):
        StaticKVCache.empty(B, HK, D, 0)


def test_caches_are_pytrees() -> None:
    cache = StaticKVCache.empty(B, HK, D, 4)
    leaves, spec = pytree.tree_flatten(cache)
    assert len(leaves) == 5
    rebuilt = pytree.tree_unflatten(leaves, spec)
    assert isinstance(rebuilt, StaticKVCache)
    assert rebuilt.keys is cache.keys


@pytest.mark.slow
def test_static_update_compiles_without_graph_break() -> None:
    cache = StaticKVCache.empty(B, HK, D, 4)
    k = torch.randn(B, HK, 1, D, generator=torch.Generator().manual_seed(1))

    @torch.compile(fullgraph=True, backend="eager")
    def write(cache: StaticKVCache, k: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cache.update(k, k, pos)
        return cache.keys.sum()

    write(cache, k, torch.tensor([0]))
    write(cache, 2 * k, torch.tensor([1]))
    assert int(cache.length) == 2
    assert torch.equal(cache.keys[:, :, 1], 2 * k[:, :, 0])
