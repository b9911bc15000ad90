"""Causal softmax attention restricted to selected key blocks (NSA's selection branch, MoBA, InfLLM-V2).

Keys are cut into aligned blocks by absolute position, key ``j`` in block ``k_pos_j // block_size``. Each query ``i``
of each selection head ``s`` keeps a boolean row ``block_mask[b, s, i, :]`` over the blocks, and attends::

    out_i = softmax_{j in J_i}(scale q_i . k_j) v_j,   J_i = {j : block_mask[b, s, i, k_pos_j // block_size]}
                                                             ∩ causal/window/attn_mask of :func:`edifice.ops.sdpa`

Query head ``h`` reads selection head ``h // (Hq // Hs)``: ``Hs = Hk`` shares one selection over a grouped-query
group (NSA eq. 10, InfLLM-V2), ``Hs = Hq`` selects per query head (MoBA). A key with a negative position or a block
index ``>= Nb`` is never selected. A query with no key left returns zeros (never NaN), as in ``sdpa``.

The selection itself (top-n by compressed scores, forced initial/local blocks) belongs to each architecture; this op
is only the attention over a given selection, so ``edifice-kernels`` can replace it with a block-sparse kernel that
never reads unselected blocks. The reference expands the block selection into a dense token mask and runs
:func:`edifice.ops.attention.sdpa_reference` (O(T^2) memory: a reference, not a long-context kernel).

Legend: ``B`` batch, ``Hq``/``Hk``/``Hs`` query, key/value and selection heads, ``Tq``/``Tk`` query and key lengths,
``Nb`` blocks, ``D`` head size, ``Dv`` value head size.
"""

from __future__ import annotations

import math

import torch

from edifice.ops._checks import expect_rank, fmt_shape
from edifice.ops._registry import Op
from edifice.ops.attention import check_sdpa, sdpa_reference

__all__ = [
    "block_sparse_attention",
    "block_sparse_attention_naive",
    "block_sparse_attention_reference",
    "check_block_sparse_attention",
    "token_mask_from_blocks",
]

_OP = "block_sparse_attention"


def check_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    block_size: int,
    causal: bool = True,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    check_sdpa(
        q, k, v, causal=causal, window=window, attn_mask=attn_mask, q_positions=q_positions, k_positions=k_positions
    )
    expect_rank(_OP, "block_mask", block_mask, 4, "[B, Hs, Tq, Nb]")
    if block_mask.dtype != torch.bool:
        raise TypeError(f"{_OP}: block_mask must be bool (True = block selected), got {block_mask.dtype}")
    B, Hq, Tq, _ = q.shape
    if block_mask.shape[0] != B or block_mask.shape[2] != Tq or block_mask.shape[3] < 1:
        raise ValueError(
            f"{_OP}: block_mask must be [B, Hs, Tq, Nb] = [{B}, Hs, {Tq}, Nb >= 1], got {fmt_shape(block_mask.shape)}"
        )
    if block_mask.shape[1] < 1 or Hq % block_mask.shape[1]:
        raise ValueError(f"{_OP}: block_mask heads Hs={block_mask.shape[1]} must divide the query heads Hq={Hq}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{_OP}: block_size must be a positive int, got {block_size!r}")


def token_mask_from_blocks(
    block_mask: torch.Tensor, k_positions: torch.Tensor | None, Tk: int, Hq: int, block_size: int
) -> torch.Tensor:
    """The dense ``[B, Hq, Tq, Tk]`` bool mask of the keys whose block is selected (causality not applied)."""
    B, Hs, Tq, Nb = block_mask.shape
    kpos = torch.arange(Tk, device=block_mask.device) if k_positions is None else k_positions.to(block_mask.device)
    kpos = kpos.to(torch.long).expand(B, Tk)
    block = torch.div(kpos, block_size, rounding_mode="floor")
    inside = (kpos >= 0) & (block < Nb)
    idx = block.clamp(0, Nb - 1)[:, None, None, :].expand(B, Hs, Tq, Tk)
    picked = block_mask.gather(3, idx) & inside[:, None, None, :]
    return picked.repeat_interleave(Hq // Hs, dim=1)


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    block_size: int,
    causal: bool = True,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Vectorised reference: the selected blocks as a dense bool mask, then :func:`sdpa_reference`."""
    selected = token_mask_from_blocks(block_mask, k_positions, k.shape[2], q.shape[1], block_size)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            selected = selected & attn_mask
        else:
            selected = torch.where(selected, attn_mask.to(torch.float32), float("-inf"))
    return sdpa_reference(
        q,
        k,
        v,
        causal=causal,
        window=window,
        attn_mask=selected,
        q_positions=q_positions,
        k_positions=k_positions,
        scale=scale,
    )


def block_sparse_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    block_size: int,
    causal: bool = True,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Test oracle: one query at a time in fp64, the key set written out as the module doc's ``J_i``."""
    B, Hq, Tq, D = q.shape
    Hk, Tk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    Hs, Nb = block_mask.shape[1], block_mask.shape[3]
    scale = D**-0.5 if scale is None else scale
    qpos = (torch.arange(Tk - Tq, Tk) if q_positions is None else q_positions.cpu()).expand(B, Tq).tolist()
    kpos = (torch.arange(Tk) if k_positions is None else k_positions.cpu()).expand(B, Tk).tolist()
    mask = None if attn_mask is None else attn_mask.expand(B, Hq, Tq, Tk)
    rows = []
    for b in range(B):
        for h in range(Hq):
            kv, s = h // (Hq // Hk), h // (Hq // Hs)
            for i in range(Tq):
                scores, idx = [], []
                for j in range(Tk):
                    blk = math.floor(kpos[b][j] / block_size)
                    if kpos[b][j] < 0 or blk >= Nb or not bool(block_mask[b, s, i, blk]):
                        continue
                    dist = qpos[b][i] - kpos[b][j]
                    if (causal and dist < 0) or (
                        window is not None and not (dist < window if causal else abs(dist) < window)
                    ):
                        continue
                    extra = torch.zeros((), dtype=torch.float64)
                    if mask is not None and mask.dtype == torch.bool and not bool(mask[b, h, i, j]):
                        continue
                    if mask is not None and mask.dtype != torch.bool:
                        extra = mask[b, h, i, j].double()
                        if not math.isfinite(float(extra)):
                            continue
                    scores.append((q[b, h, i].double() @ k[b, kv, j].double()) * scale + extra)
                    idx.append(j)
                if not idx:
                    rows.append(torch.zeros(Dv, dtype=torch.float64))
                    continue
                p = torch.softmax(torch.stack(scores), 0)
                rows.append(p @ v[b, kv, idx].double())
    return torch.stack(rows).reshape(B, Hq, Tq, Dv).to(q.dtype)


block_sparse_attention = Op(
    _OP, block_sparse_attention_reference, naive=block_sparse_attention_naive, check=check_block_sparse_attention
)
