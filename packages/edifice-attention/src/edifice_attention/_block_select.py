"""The shared machinery of the block-selection attentions (``nsa``, ``moba``, ``infllm_v2``).

Each of them is causal softmax attention over a per-query choice of aligned key blocks of ``block_size`` positions
(key at absolute position ``p`` is in block ``p // block_size``); they differ only in how the blocks are scored and
which are forced. :class:`BlockSelectAttention` is the ``decoder_only`` mixer (projections, RoPE, GQA, KV cache) whose
:meth:`~BlockSelectAttention.attend` asks the subclass's :meth:`~BlockSelectAttention.select` for a boolean
``[B, Hs, Tq, Nb]`` block selection and runs :func:`edifice.ops.block_sparse_attention` with it.

Selection is recomputed for every query from the keys it may see, so a decoding step against the KV cache selects
exactly what ``forward`` selected at that position. Scores only use *complete* spans of keys (a span is scored by a
query once its last key is at or before the query), so a span never changes after it becomes visible.

Helpers (all vectorised, positions absolute, padding excluded):

* :func:`key_layout` -- query positions ``[B, Tq]``, key positions ``[B, Tk]`` and key validity from sdpa's masking;
* :func:`keys_by_position` -- keys scattered to their absolute positions ``[B, Hk, P, D]`` (zeros where none);
* :func:`span_starts` / :func:`span_visible` / :func:`span_block_overlap` -- spans of ``size`` keys every ``stride``
  positions (MoBA's blocks, NSA's compression blocks, InfLLM-V2's semantic kernels);
* :func:`top_blocks` -- forced blocks plus the top scorers among the candidates, ``n`` in all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from edifice import ops
from edifice_attention._attention_variants import VariantAttention

__all__ = [
    "BlockSelectAttention",
    "key_layout",
    "keys_by_position",
    "n_spans",
    "span_block_overlap",
    "span_visible",
    "top_blocks",
]


def key_layout(q: Tensor, k: Tensor, masking: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """``(q_pos [B, Tq], k_pos [B, Tk], k_valid [B, Tk])`` from :func:`edifice.ops.sdpa`'s masking keywords."""
    B, Tq, Tk = q.shape[0], q.shape[2], k.shape[2]
    q_pos, k_pos, mask = masking.get("q_positions"), masking.get("k_positions"), masking.get("attn_mask")
    if k_pos is None:
        k_pos = torch.arange(Tk, device=k.device)
    if q_pos is None:
        q_pos = torch.arange(Tk - Tq, Tk, device=q.device)
    k_pos, q_pos = k_pos.to(torch.long).expand(B, Tk), q_pos.to(torch.long).expand(B, Tq)
    valid = k_pos >= 0
    if mask is not None:
        valid = valid & mask.reshape(B, Tk).bool()  # key padding [B, 1, 1, Tk]
    return q_pos, k_pos, valid


def keys_by_position(k: Tensor, k_pos: Tensor, k_valid: Tensor, n_positions: int) -> Tensor:
    """``[B, Hk, P, D]``: each valid key at its absolute position (< ``P``), zeros where no valid key is."""
    B, H, _, D = k.shape
    slot = torch.where(k_valid & (k_pos < n_positions), k_pos, n_positions)  # invalid keys go to a dropped slot
    out = k.new_zeros(B, H, n_positions + 1, D)
    out = out.scatter(2, slot[:, None, :, None].expand(B, H, -1, D), k)
    return out[:, :, :n_positions]


def n_spans(n_positions: int, size: int, stride: int) -> int:
    """How many spans ``[i stride, i stride + size)`` fit in ``n_positions`` positions."""
    return 0 if n_positions < size else (n_positions - size) // stride + 1


def span_visible(q_pos: Tensor, count: int, size: int, stride: int) -> Tensor:
    """``[B, Tq, count]`` bool: span ``i`` is complete at the query (its last position ``i stride + size - 1 <= p``)."""
    ends = torch.arange(count, device=q_pos.device) * stride + size - 1
    return ends <= q_pos[..., None]


def span_block_overlap(count: int, size: int, stride: int, n_blocks: int, block_size: int, device: Any) -> Tensor:
    """``[count, n_blocks]`` bool: span ``i`` shares a position with selection block ``j``."""
    start = torch.arange(count, device=device)[:, None] * stride
    first = torch.arange(n_blocks, device=device)[None, :] * block_size
    return (start < first + block_size) & (first < start + size)


def top_blocks(score: Tensor, candidate: Tensor, forced: Tensor, n: int) -> Tensor:
    """``[B, Hs, Tq, Nb]`` bool: every ``forced`` block, then the best-scoring ``candidate`` blocks, ``n`` in all.

    ``score [B, Hs, Tq, Nb]``; ``candidate``/``forced`` broadcast to it. Forced blocks are kept even beyond ``n``;
    ties break towards the lower block index (stable sort).
    """
    forced = forced.expand_as(score)
    eligible = candidate.expand_as(score) & ~forced
    ranked = score.float().masked_fill(~eligible, float("-inf")).masked_fill(forced, float("inf"))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    rank = order.argsort(-1)  # 0 = first chosen
    return forced | (eligible & (rank < n))


class BlockSelectAttention(VariantAttention):
    """Causal self-attention over a per-query selection of key blocks; subclasses define :meth:`select`."""

    def __init__(self, *args: Any, block_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.block_size = block_size

    def select(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor, k_valid: Tensor) -> Tensor:
        """The ``[B, Hs, Tq, Nb]`` bool block selection (``Nb = ceil(Tk / block_size)``, ``Hs`` dividing ``Hq``)."""
        raise NotImplementedError

    def selection(self, q: Tensor, k: Tensor, **masking: Any) -> Tensor:
        """:meth:`select` on the layout that sdpa's masking keywords describe (no gradient: a discrete choice)."""
        with torch.no_grad():
            return self.select(q.detach(), k.detach(), *key_layout(q, k, masking))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **masking: Any) -> Tensor:
        """Softmax attention over the selected blocks (:func:`edifice.ops.block_sparse_attention`)."""
        chosen = self.selection(q, k, **masking)
        out: Tensor = ops.block_sparse_attention(
            q, k, v, chosen, block_size=self.block_size, scale=self.scale, **masking
        )
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}"
