"""Ring attention: exact causal attention over a sequence sharded across ``torch.distributed`` ranks.

Liu, Zaharia, Abbeel (2023), "Ring Attention with Blockwise Transformers for Near-Infinite Context",
https://arxiv.org/abs/2310.01889, §3 and Algorithm 1. Each of ``W`` ranks holds one contiguous block of ``T/W``
queries, keys and values. In ``W`` steps every rank attends its queries to the key/value block it holds, then sends
that block to the next rank and receives one from the previous (``dist.batch_isend_irecv``), so each key/value
block visits every rank once. The partial results are combined with the online softmax (Milakov & Gimelshein 2018;
blockwise parallel transformer, Liu & Abbeel 2023): :func:`merge_attention` keeps, per query, the output and the
log-sum-exp ``l`` of the keys seen so far, ``l = logaddexp(l_a, l_b)``, ``o = e^{l_a - l} o_a + e^{l_b - l} o_b``.
Causality is by global position (block ``j`` holds positions ``j T/W .. (j+1) T/W - 1``).

Backward (:class:`_RingAttentionFunction`, a custom autograd Function): point-to-point ``isend``/``irecv`` are not
differentiable, so autograd cannot go through the communication. The backward recomputes each block's softmax from
the saved global ``l`` (flash-attention style) and rotates the key/value blocks *together with* their gradient
accumulators ``dK, dV`` around the ring; after ``W`` steps and one last hop of the accumulators, every rank holds the
complete gradient of its own keys and values, and its query gradient was summed locally. Communication is the same
on gloo (CPU) and NCCL (GPU).

The registered entry (``ring_attention``) runs in one process as the chunked simulation: keys and values are cut in
``num_chunks`` blocks that are visited in turn and merged with the same :func:`merge_attention` (world size 1 =
blockwise attention, equal to dense causal attention). :meth:`RingAttention.shard_over` puts its layers on a
process group: then each rank passes its own block of the sequence (rank ``r`` holds positions ``r T .. r T + T - 1``).

Deviations / choices: blocks are computed by an explicit fp32 reference (:func:`attention_block`, scores and
log-sum-exp), not :func:`edifice.ops.sdpa`, because the merge needs the log-sum-exp that ``sdpa`` does not return;
a kernel replaces it by flash attention's ``(out, lse)``. With a padding mask or a decoding state the layer attends
through decoder_only's plain path (``ops.sdpa`` with a KV cache), which is exact causal attention too. No
attention dropout, softcap or sliding window (the config rejects them). Grouped key/value heads are repeated to
the query heads before the ring (the block size sent is the repeated one).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from edifice.blocks.attention import Attention
from edifice.blocks.kv_cache import KVCache
from edifice.config import ArchConfig
from edifice_attention.configs.ring_attention import RingAttentionConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = [
    "RingAttention",
    "RingSelfAttention",
    "attention_block",
    "blockwise_attention",
    "merge_attention",
    "ring_attention",
]


def _finite(lse: Tensor) -> Tensor:
    """``lse`` with the ``-inf`` of queries that saw no key replaced by 0 (so ``exp(x - lse)`` stays 0, not NaN)."""
    return torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)


def merge_attention(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Online-softmax merge of two partial attentions over disjoint key sets: ``out [.., T, Dv]``, ``lse [.., T]``.

    Returns the attention over the union: ``l = logaddexp(l_a, l_b)``, ``o = e^{l_a - l} o_a + e^{l_b - l} o_b``; a
    query that saw no key on either side keeps ``l = -inf`` and ``o = 0``.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    safe = _finite(lse)
    out = (lse_a - safe).exp()[..., None] * out_a + (lse_b - safe).exp()[..., None] * out_b
    return out, lse


def _scores(q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor, scale: float) -> Tensor:
    """Causally masked fp32 scores ``[B, H, Tq, Tk]`` (``-inf`` where ``k_pos > q_pos``)."""
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    allowed = k_pos[..., None, :] <= q_pos[..., :, None]  # (Tq, Tk) or (B, Tq, Tk)
    if allowed.dim() == 3:
        allowed = allowed[:, None]
    return s.masked_fill(~allowed, float("-inf"))


def attention_block(
    q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Causal attention of ``q [B, H, Tq, D]`` to one key block ``k, v [B, H, Tk, D|Dv]`` -> ``(out fp32, lse)``."""
    s = _scores(q, k, q_pos, k_pos, scale)
    lse = torch.logsumexp(s, dim=-1)
    p = (s - _finite(lse)[..., None]).exp()
    return p @ v.float(), lse


def blockwise_attention(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, num_chunks: int, scale: float) -> Tensor:
    """One process: the keys and values in ``num_chunks`` blocks, visited in turn and merged (world size 1)."""
    T = k.shape[2]
    size = -(-T // num_chunks)
    out = q.new_zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float32)
    lse = torch.full(q.shape[:-1], float("-inf"), device=q.device)
    for start in range(0, T, size):
        block = slice(start, start + size)
        o_b, l_b = attention_block(q, k[:, :, block], v[:, :, block], positions, positions[..., block], scale)
        out, lse = merge_attention(out, lse, o_b, l_b)
    return out.to(q.dtype)


def _ring_pass(tensors: list[Tensor], group: Any) -> list[Tensor]:
    """Send each tensor to the next rank of the ring and receive the previous rank's (one batched exchange)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    to = dist.get_global_rank(group, (rank + 1) % world) if group is not None else (rank + 1) % world
    frm = dist.get_global_rank(group, (rank - 1) % world) if group is not None else (rank - 1) % world
    received = [torch.empty_like(t) for t in tensors]
    ops_ = [dist.P2POp(dist.isend, t.contiguous(), to, group) for t in tensors]
    ops_ += [dist.P2POp(dist.irecv, r, frm, group) for r in received]
    for request in dist.batch_isend_irecv(ops_):
        request.wait()
    return received


class _RingAttentionFunction(torch.autograd.Function):
    """Forward and backward of ring attention (see module doc); both rotate blocks around the ring."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, scale: float, group: Any) -> Tensor:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        n = q.shape[2]
        q_pos = rank * n + torch.arange(n, device=q.device)
        out = q.new_zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float32)
        lse = torch.full(q.shape[:-1], float("-inf"), device=q.device)
        kk, vv = k, v
        for i in range(world):
            src = (rank - i) % world
            o_b, l_b = attention_block(q, kk, vv, q_pos, src * n + torch.arange(n, device=q.device), scale)
            out, lse = merge_attention(out, lse, o_b, l_b)
            if i < world - 1:
                kk, vv = _ring_pass([kk, vv], group)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.group = scale, group
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        scale, group = ctx.scale, ctx.group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        n = q.shape[2]
        q_pos = rank * n + torch.arange(n, device=q.device)
        do = dout.float()
        delta = (do * out).sum(-1, keepdim=True)  # rowsum(dO ∘ O)
        dq = torch.zeros_like(q, dtype=torch.float32)
        kk, vv = k, v
        dk, dv = torch.zeros_like(k, dtype=torch.float32), torch.zeros_like(v, dtype=torch.float32)
        for i in range(world):
            src = (rank - i) % world
            p = (
                _scores(q, kk, q_pos, src * n + torch.arange(n, device=q.device), scale) - _finite(lse)[..., None]
            ).exp()
            dv = dv + p.transpose(-1, -2) @ do
            ds = p * (do @ vv.float().transpose(-1, -2) - delta)
            dq = dq + (ds @ kk.float()) * scale
            dk = dk + (ds.transpose(-1, -2) @ q.float()) * scale
            if world > 1:  # the accumulators travel with their block; one last hop brings them home
                kk, vv, dk, dv = (
                    _ring_pass([kk, vv, dk, dv], group) if i < world - 1 else [kk, vv, *_ring_pass([dk, dv], group)]
                )
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def ring_attention(q: Tensor, k: Tensor, v: Tensor, *, group: Any = None, scale: float | None = None) -> Tensor:
    """Causal attention of this rank's block ``q, k, v [B, H, T/W, D]`` to the whole sharded sequence.

    Rank ``r`` of ``group`` (default: the world) holds positions ``r T/W .. (r+1) T/W - 1``; every rank must pass
    blocks of the same shape. Differentiable (custom backward that rotates gradients too).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "ring_attention: torch.distributed is not initialised (use blockwise_attention in one process)"
        )
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[2] != k.shape[2]:
        raise ValueError(f"ring_attention: q, k, v must be [B, H, n, D] alike, got {q.shape}, {k.shape}, {v.shape}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    result: Tensor = _RingAttentionFunction.apply(q, k, v, scale, group)
    return result


class RingSelfAttention(Attention):
    """Causal self-attention computed blockwise (one process) or around a ring of ranks (see module doc)."""

    def __init__(self, *args: Any, num_chunks: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if num_chunks <= 0:
            raise ValueError(f"RingSelfAttention: num_chunks must be > 0, got {num_chunks}")
        if self.window is not None or self.softcap is not None or self.dropout or not self.causal:
            raise ValueError("RingSelfAttention: causal attention without window, softcap or dropout only")
        self.num_chunks = num_chunks
        self.process_group: Any = None
        self.distributed = False

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; on a ring, ``x`` is this rank's block (positions
        ``rank T .. rank T + T - 1``)."""
        if mask is not None or state is not None:
            if self.distributed:
                raise ValueError("RingSelfAttention: on a ring, no padding mask or decoding state")
            return super().forward(x, mask=mask, positions=positions, state=state)
        if self.distributed:
            T = x.shape[1]
            positions = dist.get_rank(self.process_group) * T + torch.arange(T, device=x.device)
        q, k, v = self._qkv(x, mask=None, positions=positions, state=None)
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scale = self.scale if self.scale is not None else self.head_dim**-0.5
        if self.distributed:
            out = ring_attention(q, k, v, group=self.process_group, scale=scale)
        else:
            pos = positions if positions is not None else torch.arange(x.shape[1], device=x.device)
            out = blockwise_attention(q, k, v, pos, self.num_chunks, scale)
        return self._merge_heads(out)


class RingAttention(DecoderOnly):
    """decoder_only whose attention layers are ring attention (see module doc)."""

    config_class: ClassVar[type[ArchConfig]] = RingAttentionConfig
    config: RingAttentionConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Ring self-attention with decoder_only's projections and RoPE."""
        return RingSelfAttention(**self.attention_kwargs(), num_chunks=self.config.num_chunks)

    def shard_over(self, group: Any = None) -> RingAttention:
        """Run every attention layer around the ranks of ``group`` (default: the world); returns ``self``."""
        for module in self.modules():
            if isinstance(module, RingSelfAttention):
                module.process_group, module.distributed = group, True
        return self
