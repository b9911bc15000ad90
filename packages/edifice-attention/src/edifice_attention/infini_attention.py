"""Infini-attention: segment-local causal softmax attention plus a compressive memory of all earlier segments.

Munkhdalai, Faruqui, Gopal (2024), "Leave No Context Behind: Efficient Infinite Context Transformers with
Infini-attention", https://arxiv.org/abs/2404.07143, §2.1. The sequence is cut into segments of ``N`` tokens
(``segment_size``); segment ``s`` holds positions ``sN .. sN + N - 1``. Per head, with ``σ = ELU + 1``:

* local attention (eq. 2): causal softmax attention of the segment's queries to the segment's keys only;
* memory retrieval (eq. 8): ``A_mem = σ(Q) M_{s-1} / (σ(Q) z_{s-1})``;
* memory update (eq. 7, "linear"): ``M_s = M_{s-1} + σ(K)ᵀ V``, ``z_s = z_{s-1} + Σ_t σ(K_t)``;
  or (eq. 9, "delta"): ``M_s = M_{s-1} + σ(K)ᵀ (V - σ(K) M_{s-1} / (σ(K) z_{s-1}))``, same ``z``;
* gate (eq. 10): ``A = sigmoid(β) ⊙ A_mem + (1 - sigmoid(β)) ⊙ A_dot`` with one learned scalar ``β`` per head,
  then the output projection.

The memory is updated only when a segment is complete, so a query reads the memory of the *earlier* segments and
attends its own segment exactly. :func:`infini_memory` runs the segment recurrence once, vectorised over batch,
heads and the tokens of a segment, looping over the (statically bounded number of) segments a call spans. The delta
update depends nonlinearly on ``M_{s-1}`` through the normaliser, so neither :func:`edifice.ops.linear_attention`
(token-level causal) nor :func:`edifice.ops.delta_rule` (token-level, scalar β, no normaliser) expresses it.
Segments come from absolute positions, so padding and decoding use the same code. The local attention goes
through :func:`edifice.ops.sdpa` with a same-segment mask.

Deviations / choices (stated): ``M_0 = 0, z_0 = 0`` and the normalisers get ``+ eps`` (``memory_eps``), so the
first segment reads zeros from the memory and the first delta update adds ``σ(K)ᵀV`` (the paper leaves the 0/0 of
the empty memory open); the memory reads un-rotated ``q, k`` while the local attention uses decoder_only's RoPE (the
paper's memory has no positions); with grouped-query attention the memory lives per key/value head and the query
heads of a group read it; ``β`` starts at 0 (gate 1/2). Decoding state: the memory, the normaliser and the current
segment's keys/values (un-rotated for the memory, rotated for local attention) in ``N`` fixed slots, so its size is
constant and the segment loop has a static trip count (no host sync).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.attention import Attention
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_attention.configs.infini_attention import InfiniAttentionConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["InfiniAttention", "InfiniSelfAttention", "InfiniState", "infini_memory"]


def infini_memory(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_segments: Tensor,
    k_segments: Tensor,
    fold: Tensor,
    memory: Tensor,
    norm: Tensor,
    *,
    first: Tensor,
    n_segments: int,
    delta: bool,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Memory retrieval (eq. 8) and update (eq. 7 or 9), segment by segment.

    ``q [B, Hk, G, T, D]``, ``k [B, Hk, L, D]``, ``v [B, Hk, L, Dv]`` are un-activated; ``q_segments [B, T]`` and
    ``k_segments [B, L]`` are segment indices; row ``b`` visits segments ``first[b] .. first[b] + n_segments - 1``
    (a static count, so the loop compiles). ``fold [B, L]`` marks the keys to write into the memory (each is written
    when its segment is visited, after the queries of that segment have read). ``memory [B, Hk, D, Dv]`` and
    ``norm [B, Hk, D]`` are ``M`` and ``z`` before ``first``. Returns ``(A_mem [B, Hk, G, T, Dv], M, z)``.
    """
    sq, sk = F.elu(q) + 1, F.elu(k) + 1
    out = q.new_zeros(*q.shape[:-1], v.shape[-1])
    for r in range(n_segments):
        s = (first + r)[:, None]  # (B, 1)
        reads = (q_segments == s)[:, None, None, :, None]  # (B, 1, 1, T, 1)
        retrieved = (sq @ memory[:, :, None]) / ((sq @ norm[:, :, None, :, None]) + eps)
        out = torch.where(reads, retrieved, out)
        w = (fold & (k_segments == s)).to(sk.dtype)[:, None, :, None]  # (B, 1, L, 1)
        new = v - (sk @ memory) / ((sk @ norm[..., None]) + eps) if delta else v
        memory = memory + (sk * w).transpose(-1, -2) @ new
        norm = norm + (sk * w).sum(-2)
    return out, memory, norm


@model_output
class InfiniState:
    """Decoding state of one Infini-attention layer (updated in place by ``forward(..., state=...)``)."""

    memory: Tensor  # (B, Hk, D, Dv) M of the completed segments
    norm: Tensor  # (B, Hk, D) z of the completed segments
    keys: Tensor  # (B, Hk, L, D) the current segment's keys, un-rotated (for the memory)
    rotated: Tensor  # (B, Hk, L, D) the same keys with RoPE (for local attention)
    values: Tensor  # (B, Hk, L, Dv)
    positions: Tensor  # (B, L) int64
    valid: Tensor  # (B, L) bool


class InfiniSelfAttention(Attention):
    """Causal (grouped-query) Infini-attention (see module doc); its state keeps the memory and the open segment."""

    def __init__(self, *args: Any, segment_size: int, update: str = "delta", eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if segment_size <= 0:
            raise ValueError(f"InfiniSelfAttention: segment_size must be > 0, got {segment_size}")
        if update not in ("linear", "delta"):
            raise ValueError(f"InfiniSelfAttention: update must be 'linear' or 'delta', got {update!r}")
        if self.window is not None or not self.causal:
            raise ValueError("InfiniSelfAttention: local attention is causal within a segment (no window)")
        self.segment_size, self.update, self.eps = segment_size, update, eps
        self.beta = nn.Parameter(torch.zeros(self.n_heads))  # eq. 10, one gate scalar per head

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "beta"):
            nn.init.zeros_(self.beta)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: InfiniState | None = None,  # type: ignore[override]  # its own state, not a KV cache
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``state`` (if given) is read and updated in place."""
        self._check_call(x, mask, positions, state)
        B, T, _ = x.shape
        pos = positions if positions is not None else torch.arange(T, device=x.device)
        pos = pos.to(torch.long).expand(B, T)
        valid = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=x.device)
        q = self._split(self.q_proj, x, self.n_heads, self.q_norm)  # (B, Hq, T, D)
        k = self._split(self.k_proj, x, self.n_kv_heads, self.k_norm)  # (B, Hk, T, D)
        v = self._split(self.v_proj, x, self.n_kv_heads, None)
        q_rot, k_rot = self._rotate(x, pos, q, k)
        Hk, D = self.n_kv_heads, self.head_dim
        if state is None:
            memory = q.new_zeros(B, Hk, D, v.shape[-1])
            norm = q.new_zeros(B, Hk, D)
        else:
            memory, norm = state.memory, state.norm
            k, k_rot, v = (
                torch.cat([c.to(n.dtype), n], 2)
                for c, n in ((state.keys, k), (state.rotated, k_rot), (state.values, v))
            )
            pos_k, valid_k = torch.cat([state.positions, pos], 1), torch.cat([state.valid, valid], 1)
        if state is None:
            pos_k, valid_k = pos, valid
        seg_q = torch.div(pos, self.segment_size, rounding_mode="floor")
        seg_k = torch.div(pos_k, self.segment_size, rounding_mode="floor")
        last = torch.where(valid_k, seg_k, torch.full_like(seg_k, -(2**62))).amax(1, keepdim=True)  # (B, 1)
        first = torch.where(valid_k, seg_k, last).amin(1)  # (B,) a row's valid keys span consecutive positions
        fold = valid_k & (seg_k < last)
        G, L = self.n_heads // Hk, seg_k.shape[1]
        mem_out, memory, norm = infini_memory(
            q.view(B, Hk, G, T, D), k, v, seg_q, seg_k, fold, memory, norm, first=first,
            n_segments=-(-L // self.segment_size) + 1, delta=self.update == "delta", eps=self.eps,
        )  # fmt: skip
        local_mask = (seg_q[:, :, None] == seg_k[:, None, :]) & valid_k[:, None, :]  # (B, T, L)
        local = ops.sdpa(
            q_rot, k_rot, v, causal=True, attn_mask=local_mask[:, None], q_positions=pos, k_positions=pos_k,
            scale=self.scale, softcap=self.softcap, dropout_p=self.dropout if self.training else 0.0,
        )  # fmt: skip
        gate = torch.sigmoid(self.beta).to(local.dtype)[None, :, None, None]  # (1, Hq, 1, 1)
        out = gate * mem_out.reshape(local.shape).to(local.dtype) + (1 - gate) * local
        if state is not None:  # keep each row's last segment (at most N keys) in the state's N slots
            keep = valid_k & (seg_k == last)
            order = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, : self.segment_size]
            idx = order[:, None, :, None]
            state.memory, state.norm = memory, norm
            state.keys, state.rotated, state.values = (
                t.gather(2, idx.expand(*t.shape[:2], -1, t.shape[-1])) for t in (k, k_rot, v)
            )
            state.positions, state.valid = pos_k.gather(1, order), keep.gather(1, order)
        return self._merge_heads(out)

    def init_state(  # type: ignore[override]  # memory + open segment, not a KV cache
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> InfiniState:
        """An empty memory and ``segment_size`` empty key slots (``max_len`` is ignored: the size is fixed)."""
        weight = self.k_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        B, Hk, D, N = batch_size, self.n_kv_heads, self.head_dim, self.segment_size
        return InfiniState(
            memory=torch.zeros(B, Hk, D, D, device=device, dtype=dtype),
            norm=torch.zeros(B, Hk, D, device=device, dtype=dtype),
            keys=torch.zeros(B, Hk, N, D, device=device, dtype=dtype),
            rotated=torch.zeros(B, Hk, N, D, device=device, dtype=dtype),
            values=torch.zeros(B, Hk, N, D, device=device, dtype=dtype),
            positions=torch.zeros(B, N, dtype=torch.long, device=device),
            valid=torch.zeros(B, N, dtype=torch.bool, device=device),
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, segment_size={self.segment_size}, update={self.update}"


class InfiniAttention(DecoderOnly):
    """decoder_only whose attention layers are Infini-attention (see module doc)."""

    config_class: ClassVar[type[ArchConfig]] = InfiniAttentionConfig
    config: InfiniAttentionConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Infini-attention with decoder_only's projections and RoPE."""
        c = self.config
        return InfiniSelfAttention(
            **self.attention_kwargs(), segment_size=c.segment_size, update=c.memory_update, eps=c.memory_eps
        )
