"""Dual chunk attention (DCA): training-free long context by remapping RoPE position indices per chunk pair.

An, Huang, Zhang, Gong, Qiu, Zhou, Kong (2024), "Training-Free Long-Context Scaling of Large Language Models",
https://arxiv.org/abs/2402.17463, §3 (ChunkLlama; used by Qwen2.5-1M, Yang et al. 2025, arXiv:2501.15383, §4.1).
The sequence is cut into chunks of ``s`` tokens (``chunk_size``). Keys always take the position ``P_k[j] = j mod s``;
a query ``i`` reads each key through one of three position indices, by the chunks of ``i`` and ``j``:

* intra-chunk (§3.1, eq. 3), same chunk: ``P_q[i] = i mod s``, relative position ``(i - j)``, as plain RoPE;
* successive-chunk (§3.3, eq. 5), the previous chunk: ``P_q^succ[i] = min(i mod s + s, s + w)`` (``w`` =
  ``local_window``), so neighbouring tokens across a chunk border keep their true distance for the first ``w``;
* inter-chunk (§3.2, eq. 4), earlier chunks: ``P_q^inter[i] = min(2s - 1, s + w)``, one large constant;

``M[i][j] = P_q^*[i] - P_k[j]`` never exceeds ``s + w``, which must lie inside the training length, whatever the
sequence length. All three score kinds share one softmax (the paper merges three flash-attention calls by their
log-sum-exp, §3.4; equal to one softmax over the union). This module computes them in *one* call of
:func:`edifice.ops.sdpa`: the queries rotated three ways are concatenated along the head dimension, ``[q_intra;
q_succ; q_inter]`` (``3D``), and the keys are laid out three times along the key axis, copy ``c`` placed in slot ``c``
of ``3D`` with zeros elsewhere, so ``q_cat · k_cat[c, j] = q_c · k_j``; a boolean mask keeps, for each pair, only the
copy of its kind (and causality, padding); values repeat three times; the scale stays ``1/sqrt(D)``. This reference
costs 3x the keys and 3x the head size; a fused kernel can replace it.

Within one chunk (``T <= s``) every pair is intra-chunk with ``i mod s = i``: DCA *equals* RoPE attention.

Deviations / choices: the constants follow the authors' released code (``chunkllama_attn_replace.py``:
``chunk_len = chunk_size - local_window``, succ/inter query positions capped at ``chunk_size``), which the paper
writes with the pretraining length ``c`` (``P_q^inter = c - 1``); here ``chunk_size`` is their ``chunk_len`` and the
cap is ``s + w``. Qwen2.5-1M's additional attention temperature and sparse (MInference) prefill are not modelled.
Keys are rotated at ``j mod s`` before caching, so ``step`` with the usual KV cache reproduces ``forward``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.attention import Attention
from edifice.blocks.kv_cache import KVCache
from edifice.blocks.rope import apply_rotary
from edifice.config import ArchConfig
from edifice_attention.configs.dual_chunk_attention import DualChunkAttentionConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["DualChunkAttention", "DualChunkSelfAttention", "dual_chunk_query_positions"]


def dual_chunk_query_positions(positions: Tensor, chunk_size: int, local_window: int) -> tuple[Tensor, Tensor, Tensor]:
    """The three query position indices of absolute ``positions``: intra, successive-chunk and inter-chunk."""
    s, w = chunk_size, local_window
    intra = positions % s
    succ = (intra + s).clamp(max=s + w)
    inter = torch.full_like(positions, min(2 * s - 1, s + w))
    return intra, succ, inter


class DualChunkSelfAttention(Attention):
    """Causal (grouped-query) self-attention with dual-chunk RoPE positions (see module doc); a plain KV cache."""

    def __init__(self, *args: Any, chunk_size: int, local_window: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.rope is None:
            raise ValueError("DualChunkSelfAttention needs a RotaryEmbedding (rope=...)")
        if chunk_size <= 0 or local_window <= 0:
            raise ValueError(
                f"DualChunkSelfAttention: chunk_size and local_window must be > 0, got {chunk_size}, {local_window}"
            )
        self.chunk_size, self.local_window = chunk_size, local_window
        if self.scale is None:
            self.scale = self.head_dim**-0.5  # the concatenated 3D heads must keep 1/sqrt(D)

    def _rotate_at(self, x: Tensor, positions: Tensor) -> Tensor:
        assert self.rope is not None
        cos, sin = self.rope(positions)
        return apply_rotary(x, cos, sin)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
    ) -> Tensor:
        """Attend ``x [B, T, d_model]`` causally to itself and the cache with DCA positions -> ``[B, T, d_model]``."""
        self._check_call(x, mask, positions, state)
        pos = positions if positions is not None else torch.arange(x.shape[1], device=x.device)
        q = self._split(self.q_proj, x, self.n_heads, self.q_norm)  # (B, Hq, T, D)
        k = self._split(self.k_proj, x, self.n_kv_heads, self.k_norm)  # (B, Hk, T, D)
        v = self._split(self.v_proj, x, self.n_kv_heads, None)
        k = self._rotate_at(k, pos % self.chunk_size)  # P_k[j] = j mod s
        k, v, masking = self._fetch(k, v, mask=mask, positions=positions, state=state)
        L = k.shape[2]
        k_pos = masking.get("k_positions")
        k_pos = k_pos if k_pos is not None else torch.arange(L, device=x.device)
        q_cat = torch.cat(
            [self._rotate_at(q, p) for p in dual_chunk_query_positions(pos, self.chunk_size, self.local_window)], dim=-1
        )
        zeros = torch.zeros_like(k)
        k_cat = torch.cat(
            [torch.cat([k, zeros, zeros], -1), torch.cat([zeros, k, zeros], -1), torch.cat([zeros, zeros, k], -1)],
            dim=2,
        )  # (B, Hk, 3L, 3D)
        v_cat = torch.cat([v, v, v], dim=2)
        qp, kp = pos.unsqueeze(-1), k_pos.unsqueeze(-2)  # (.., T, 1), (.., 1, L)
        gap = torch.div(qp, self.chunk_size, rounding_mode="floor") - torch.div(
            kp, self.chunk_size, rounding_mode="floor"
        )
        kinds = torch.cat([(gap == 0) & (kp <= qp), gap == 1, gap >= 2], dim=-1)  # (.., T, 3L)
        kinds = kinds.unsqueeze(-3) if kinds.dim() == 3 else kinds  # (B, 1, T, 3L) or (T, 3L)
        padding = masking.get("attn_mask")
        if padding is not None:
            kinds = kinds & padding.repeat(1, 1, 1, 3)
        return self._attend(q_cat, k_cat, v_cat, attn_mask=kinds)


class DualChunkAttention(DecoderOnly):
    """decoder_only whose attention layers use dual chunk attention (see module doc)."""

    config_class: ClassVar[type[ArchConfig]] = DualChunkAttentionConfig
    config: DualChunkAttentionConfig

    def build_mixer(self, index: int) -> nn.Module:
        """DCA self-attention with decoder_only's projections and RoPE."""
        c = self.config
        return DualChunkSelfAttention(**self.attention_kwargs(), chunk_size=c.chunk_size, local_window=c.local_window)
