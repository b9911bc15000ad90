"""Key/value caches for attention decoding: a dynamic one that grows, and a static one preallocated to ``max_len``.

Both hold, per layer, the cached keys and values with the absolute position and the validity of every cached slot,
which is exactly what :func:`edifice.ops.sdpa` needs (``k_positions`` and a key-padding ``attn_mask``), so a cache
never has to be "trimmed" or "shifted": causality, sliding windows and padding are all decided from positions.

* :class:`DynamicKVCache` concatenates new keys along time (simple; allocates every step).
* :class:`StaticKVCache` writes new keys in place with ``index_copy_`` at slots ``length + arange(t)``, where
  ``length`` is a 0-d tensor. ``update`` makes no host sync and allocates nothing that depends on data, so a decode
  step can be captured in a CUDA graph. Unwritten slots stay invalid and are masked out.
* :class:`SlidingWindowKVCache` is a constant-size ring buffer for sliding-window attention: each sequence keeps
  only its last ``window`` valid keys (Mistral's rolling buffer cache, Jiang et al. 2023, arXiv:2310.06825, §2), so
  decoding memory does not grow with the sequence. Attention reads a cache through :meth:`KVCache.update_and_fetch`,
  which lets the ring buffer hand a multi-position chunk the keys it overwrites.

Both are ``@model_output`` dataclasses (pytrees) and are updated in place by :meth:`update`, so a model's state that
holds them is threaded through ``step`` unchanged.

Legend: B batch, Hk key/value heads, L cached slots, t new positions, D head size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edifice.errors import InputError
from edifice.outputs import model_output

__all__ = ["DynamicKVCache", "KVCache", "SlidingWindowKVCache", "StaticKVCache"]


class KVCache:
    """Interface of a layer's key/value cache: the cached tensors plus an in-place :meth:`update`."""

    keys: Tensor  # (B, Hk, L, D)
    values: Tensor  # (B, Hk, L, Dv)
    positions: Tensor  # (B, L) int64 absolute position of each slot
    valid: Tensor  # (B, L) bool, True where the slot holds a real (non-padding) key

    def update(self, keys: Tensor, values: Tensor, positions: Tensor, valid: Tensor | None = None) -> None:
        """Append ``t`` new keys/values ``[B, Hk, t, D]`` at absolute ``positions`` (``[t]`` or ``[B, t]``)."""
        raise NotImplementedError

    def attention_mask(self) -> Tensor:
        """The key-padding mask ``[B, 1, 1, L]`` (True = attend) to pass to ``ops.sdpa``."""
        return self.valid[:, None, None, :]

    def update_and_fetch(
        self, keys: Tensor, values: Tensor, positions: Tensor, valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`update`, then what the new queries attend: ``(keys, values, key positions [B, L], attn_mask)``.

        ``attn_mask`` is the key-padding mask ``[B, 1, 1, L]``. For the growing caches this is simply the cache after
        the update; a ring buffer returns its old slots followed by the new keys when it gets more than one.
        """
        self.update(keys, values, positions, valid)
        return self.keys, self.values, self.positions, self.attention_mask()


def _check_update(cache: KVCache, keys: Tensor, values: Tensor) -> None:
    if keys.dim() != 4 or values.dim() != 4:
        raise ValueError(
            f"KV cache update expects keys and values [B, Hk, t, D], got {list(keys.shape)} and {list(values.shape)}"
        )
    expected = (cache.keys.shape[0], cache.keys.shape[1], keys.shape[2], cache.keys.shape[3])
    if tuple(keys.shape) != expected or values.shape[:3] != keys.shape[:3] or values.shape[3] != cache.values.shape[3]:
        raise ValueError(
            f"KV cache update expects keys {list(expected)} and values "
            f"{[*expected[:3], cache.values.shape[3]]}, got {list(keys.shape)} and {list(values.shape)}"
        )


def _new_slots(keys: Tensor, positions: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Broadcast ``positions`` and ``valid`` of the new keys to ``[B, t]``."""
    B, _, t, _ = keys.shape
    if positions.shape not in ((t,), (B, t)):
        raise ValueError(f"KV cache update expects positions [{t}] or [{B}, {t}], got {list(positions.shape)}")
    positions = positions.to(torch.long).expand(B, t)
    if valid is None:
        valid = torch.ones(B, t, dtype=torch.bool, device=keys.device)
    elif valid.shape != (B, t) or valid.dtype != torch.bool:
        raise ValueError(f"KV cache update expects a bool valid mask [{B}, {t}], got {valid.dtype} {list(valid.shape)}")
    return positions, valid


@model_output
class DynamicKVCache(KVCache):
    """A cache that grows by concatenation: no length limit, one allocation per update."""

    keys: Tensor  # (B, Hk, L, D)
    values: Tensor  # (B, Hk, L, Dv)
    positions: Tensor  # (B, L) int64
    valid: Tensor  # (B, L) bool

    @classmethod
    def empty(
        cls,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        v_head_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DynamicKVCache:
        """An empty cache (``L = 0``) for ``batch_size`` sequences."""
        return cls(
            keys=torch.zeros(batch_size, n_kv_heads, 0, head_dim, device=device, dtype=dtype),
            values=torch.zeros(batch_size, n_kv_heads, 0, v_head_dim or head_dim, device=device, dtype=dtype),
            positions=torch.zeros(batch_size, 0, dtype=torch.long, device=device),
            valid=torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
        )

    def update(self, keys: Tensor, values: Tensor, positions: Tensor, valid: Tensor | None = None) -> None:
        """Concatenate the new keys/values and their positions/validity after the cached ones."""
        _check_update(self, keys, values)
        positions, valid = _new_slots(keys, positions, valid)
        self.keys = torch.cat([self.keys, keys.to(self.keys.dtype)], dim=2)
        self.values = torch.cat([self.values, values.to(self.values.dtype)], dim=2)
        self.positions = torch.cat([self.positions, positions], dim=1)
        self.valid = torch.cat([self.valid, valid], dim=1)


@model_output
class StaticKVCache(KVCache):
    """A cache preallocated to ``max_len`` slots and written in place; ``length`` is a tensor (no host sync)."""

    keys: Tensor  # (B, Hk, max_len, D)
    values: Tensor  # (B, Hk, max_len, Dv)
    positions: Tensor  # (B, max_len) int64
    valid: Tensor  # (B, max_len) bool; False for slots not written yet
    length: Tensor  # () int64: number of slots written, i.e. where the next update starts

    @classmethod
    def empty(
        cls,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        v_head_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StaticKVCache:
        """A cache of ``max_len`` unwritten slots for ``batch_size`` sequences."""
        if max_len <= 0:
            raise ValueError(f"StaticKVCache needs max_len > 0, got {max_len}")
        return cls(
            keys=torch.zeros(batch_size, n_kv_heads, max_len, head_dim, device=device, dtype=dtype),
            values=torch.zeros(batch_size, n_kv_heads, max_len, v_head_dim or head_dim, device=device, dtype=dtype),
            positions=torch.zeros(batch_size, max_len, dtype=torch.long, device=device),
            valid=torch.zeros(batch_size, max_len, dtype=torch.bool, device=device),
            length=torch.zeros((), dtype=torch.long, device=device),
        )

    @property
    def max_len(self) -> int:
        """Number of preallocated slots."""
        return self.keys.shape[2]

    def update(self, keys: Tensor, values: Tensor, positions: Tensor, valid: Tensor | None = None) -> None:
        """Write the new keys/values at slots ``length .. length + t - 1`` in place and advance ``length``."""
        _check_update(self, keys, values)
        positions, valid = _new_slots(keys, positions, valid)
        t = keys.shape[2]
        # Only a CPU cache can check its capacity for free; on an accelerator it would cost a host sync per step.
        if self.length.device.type == "cpu" and not torch.compiler.is_compiling():
            written = int(self.length)
            if written + t > self.max_len:
                # An InputError: the caller stepped more positions than the state it built holds.
                raise InputError(
                    f"static KV cache overflow: {written} positions cached + {t} new > its size max_len="
                    f"{self.max_len}; pass a larger max_len to init_state (or max_len=None for a growing cache)"
                )
        index = self.length + torch.arange(t, device=keys.device)  # (t,)
        self.keys.index_copy_(2, index, keys.to(self.keys.dtype))
        self.values.index_copy_(2, index, values.to(self.values.dtype))
        self.positions.index_copy_(1, index, positions)
        self.valid.index_copy_(1, index, valid)
        self.length.add_(t)


@model_output
class SlidingWindowKVCache(KVCache):
    """A ring buffer of each sequence's last ``window`` valid keys: constant size, written in place, no host sync.

    Slots ``0 .. window - 1`` form the ring; a valid key whose rank among its sequence's valid keys is ``n`` lives in
    slot ``n % window``. Slot ``window`` is a scratch slot that padding (and the keys a long chunk evicts at once) is
    written to; it is never valid. Only attention with a causal window of at most ``window`` reads it correctly:
    older keys are gone. A step of one position writes first and attends the ring (the slot it overwrites held a key
    ``window`` positions back, outside the window); a chunk of ``t > 1`` positions attends the old ring followed by
    its own keys (``window + 1 + t`` slots), then writes its last ``window`` valid keys.
    """

    keys: Tensor  # (B, Hk, window + 1, D)
    values: Tensor  # (B, Hk, window + 1, Dv)
    positions: Tensor  # (B, window + 1) int64
    valid: Tensor  # (B, window + 1) bool; False for unwritten slots and the scratch slot
    written: Tensor  # (B,) int64: valid keys written so far by each sequence

    @classmethod
    def empty(
        cls,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        window: int,
        *,
        v_head_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SlidingWindowKVCache:
        """An empty ring of ``window`` slots (plus the scratch slot) for ``batch_size`` sequences."""
        if window <= 0:
            raise ValueError(f"SlidingWindowKVCache needs window > 0, got {window}")
        slots = window + 1
        return cls(
            keys=torch.zeros(batch_size, n_kv_heads, slots, head_dim, device=device, dtype=dtype),
            values=torch.zeros(batch_size, n_kv_heads, slots, v_head_dim or head_dim, device=device, dtype=dtype),
            positions=torch.zeros(batch_size, slots, dtype=torch.long, device=device),
            valid=torch.zeros(batch_size, slots, dtype=torch.bool, device=device),
            written=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    @property
    def window(self) -> int:
        """Number of ring slots: the longest causal window this cache can serve."""
        return self.keys.shape[2] - 1

    def update(self, keys: Tensor, values: Tensor, positions: Tensor, valid: Tensor | None = None) -> None:
        """Write each sequence's last ``window`` new valid keys into their ring slots, in place."""
        _check_update(self, keys, values)
        positions, valid = _new_slots(keys, positions, valid)
        B, Hk, t, D = keys.shape
        W = self.window
        rank = valid.to(torch.long).cumsum(dim=-1) - 1  # (B, t) rank of each new key among this call's valid ones
        count = valid.to(torch.long).sum(dim=-1, keepdim=True)  # (B, 1)
        keep = valid & (rank >= count - W)  # only the last W valid keys of a long chunk survive
        slot = torch.where(keep, (self.written[:, None] + rank) % W, W)  # (B, t); W is the scratch slot
        # Ring slots are distinct within a row; duplicates only hit the scratch slot, whose content is never read.
        self.keys.scatter_(2, slot[:, None, :, None].expand(B, Hk, t, D), keys.to(self.keys.dtype))
        Dv = values.shape[3]
        self.values.scatter_(2, slot[:, None, :, None].expand(B, Hk, t, Dv), values.to(self.values.dtype))
        self.positions.scatter_(1, slot, positions)
        self.valid.scatter_(1, slot, keep)
        self.written.add_(count.squeeze(-1))

    def update_and_fetch(
        self, keys: Tensor, values: Tensor, positions: Tensor, valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One position: write, then attend the ring. ``t > 1``: attend the old ring and the new keys, then write."""
        if keys.shape[2] == 1:
            self.update(keys, values, positions, valid)
            return self.keys, self.values, self.positions, self.attention_mask()
        _check_update(self, keys, values)
        new_positions, new_valid = _new_slots(keys, positions, valid)
        fetched = (
            torch.cat([self.keys, keys.to(self.keys.dtype)], dim=2),
            torch.cat([self.values, values.to(self.values.dtype)], dim=2),
            torch.cat([self.positions, new_positions], dim=1),
            torch.cat([self.valid, new_valid], dim=1)[:, None, None, :],
        )
        self.update(keys, values, new_positions, new_valid)
        return fetched
