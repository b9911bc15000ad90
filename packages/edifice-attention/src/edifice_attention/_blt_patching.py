"""Byte Latent Transformer helpers: hash n-gram ids (§3.2.1), patch boundaries (§2) and patch-membership masks.

Everything here is integer bookkeeping with no parameters; :mod:`edifice_attention.byte_latent_transformer` uses it.

Patch starts live on the positions ``0 .. T`` of a ``T``-byte sequence: position ``T`` is the *next* byte, so that
whether the last byte closes a patch is known (the authors' ``include_next_token``). Bytes 0 and 1 always start a
patch (``find_entropy_patch_start_ids`` in facebookresearch/blt ``bytelatent/data/patcher.py``): the first patch
is one byte, and every later start at ``t + 1`` is decided by byte ``t``'s next-byte entropy, so the patching is
causal. Legend: B batch, T bytes, P patches, k slots per patch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["HASH_PRIMES", "cross_mask", "entropy", "hash_ngram_ids", "patch_starts", "rule_starts"]

#: The bases ``a`` of the rolling polynomial hash, one per hash function (the authors' ``primes`` list).
HASH_PRIMES = (
    1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899, 9576890767, 3628273133, 2860486313,
    5463458053, 3367900313,
)  # fmt: skip

_WRAP = 1 << 64


def _int64(value: int) -> int:
    """``value`` modulo 2^64 as a signed int64 (the wrap-around of int64 arithmetic)."""
    value %= _WRAP
    return value - _WRAP if value >= 1 << 63 else value


def hash_ngram_ids(window: Tensor, sizes: tuple[int, ...], functions: int, vocab: int) -> Tensor:
    """Row of every byte's n-gram in the fused hash table: ``window [B, n_max - 1 + T]`` -> ``[B, T, tables]``.

    ``window`` holds the ``n_max - 1`` bytes before the ``T`` bytes of interest (zeros before the sequence starts,
    as the authors pad). The n-gram ending at byte ``i`` is ``g = (b_{i-n+1}, ..., b_i)`` and its id is
    ``RollPolyHash(g) mod vocab`` (§3.2.1) with ``RollPolyHash(g) = sum_j g_j a^j`` over ``j = 0 .. n-1`` in int64
    arithmetic (wrapping modulo 2^64). Deviation from the paper's formula, following the released code
    (``rolling_polynomial_hash`` in ``bytelatent/model/blt.py``): the *oldest* byte gets ``a^0`` (the paper writes
    ``b_{i-j+1} a^{j-1}``, the newest byte first); checkpoints depend on it. Table ``f * len(sizes) + s`` (hash
    function ``f``, size ``sizes[s]``) owns rows ``[table * vocab, (table + 1) * vocab)``.
    """
    n_max = max(sizes)
    T = window.shape[1] - (n_max - 1)
    ids: list[Tensor] = []
    for f in range(functions):
        prime = HASH_PRIMES[f % len(HASH_PRIMES)]
        for n in sizes:
            grams = window[:, n_max - n :].unfold(1, n, 1)  # (B, T, n): bytes i-n+1 .. i
            powers = torch.tensor([_int64(prime**j) for j in range(n)], dtype=torch.long, device=window.device)
            hashed = (grams * powers).sum(-1)  # int64, wraps modulo 2^64
            ids.append(torch.remainder(hashed, vocab) + len(ids) * vocab)
    out = torch.stack(ids, dim=-1)
    assert out.shape[1] == T
    return out


def entropy(logits: Tensor) -> Tensor:
    """Next-byte entropy ``H(x_i) = -sum_v p(v) log p(v)`` (§2.3, eq. 4) in fp32, over the last axis."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def rule_starts(entropies: Tensor, rule: str, threshold: float) -> Tensor:
    """Which positions ``2 .. T`` open a patch by the entropy rule: ``entropies [B, T]`` -> ``[B, T - 1]`` bool.

    Position ``t + 1`` starts a patch when byte ``t`` (``t >= 1``; byte 0's entropy is ignored, as the authors do)
    satisfies the global constraint ``H(x_t) > θ_g`` or the approximate monotonic constraint
    ``H(x_t) - H(x_{t-1}) > θ_r`` (§2.3). Under the monotonic rule position 2 always starts one: the authors' mask
    has no difference for byte 1 (``patch_start_mask_from_entropy_with_monotonicity``).
    """
    tail = entropies[:, 1:]  # bytes 1 .. T-1 decide positions 2 .. T
    if rule == "global":
        return tail > threshold
    rises = tail[:, 1:] - tail[:, :-1] > threshold
    first = torch.ones_like(tail[:, :1], dtype=torch.bool)
    return torch.cat([first, rises], dim=1)


def patch_starts(
    natural: Tensor,
    max_patch_length: int | None,
) -> Tensor:
    """Final patch starts ``[B, T + 1]``: the ``natural`` (rule) starts, long patches split every ``max_patch_length``.

    A patch of ``L`` bytes starting at ``s`` is cut at ``s + m, s + 2m, ...`` (transformers' ``process_patch_lengths``,
    the authors' ``split_large_numbers``): position ``p`` starts a patch when it is a natural start or lies a
    multiple of ``m`` after the last natural start.
    """
    if max_patch_length is None:
        return natural
    pos = torch.arange(natural.shape[1], device=natural.device)
    last = torch.cummax(torch.where(natural, pos, 0), dim=1).values  # last natural start at or before p
    return natural | ((pos - last) % max_patch_length == 0)


def cross_mask(patch_of: Tensor, n_patches: int, k: int, *, patches_as_queries: bool) -> Tensor:
    """Patch-membership mask for cross-attention between bytes and the ``k`` slots of each of ``n_patches`` patches.

    ``patch_of [B, T]`` gives each byte's patch. Encoder (``patches_as_queries``): ``[B, 1, P*k, T]``, slot ``s``
    attends the bytes of patch ``s // k`` (§3.2.2). Decoder: ``[B, 1, T, P*k]``, byte ``t`` attends the slots of
    patch ``patch_of[t]`` (§3.3). True = attend.
    """
    slot_patch = torch.arange(n_patches * k, device=patch_of.device) // k  # (P*k,)
    if patches_as_queries:
        return (slot_patch[None, :, None] == patch_of[:, None, :]).unsqueeze(1)
    return (patch_of[:, :, None] == slot_patch[None, None, :]).unsqueeze(1)
