"""NSA: Native Sparse Attention -- compressed, selected and sliding-window branches mixed by per-head sigmoid gates.

Yuan et al. (2025), "Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse Attention",
https://arxiv.org/abs/2502.11089, §3.2-3.3. For a query ``q_t`` (one per query head)::

    o_t = g_cmp · Attn(q_t, K̃_cmp, Ṽ_cmp) + g_slc · Attn(q_t, K̃_slc, Ṽ_slc) + g_win · Attn(q_t, K̃_win, Ṽ_win)  (eq. 5)

* **Compression** (eq. 7): ``K̃_cmp = {φ_k(k_{id : id+l}) : id + l - 1 <= t}`` -- spans of ``l = cmp_size`` keys every
  ``d = cmp_stride`` positions, each mapped to one key by ``φ``, "a learnable MLP with intra-block position encoding":
  here ``φ(x) = W_2 SiLU(W_1 flatten(x + E))`` with a learned position embedding ``E [l, D]``, one ``φ_k`` for keys
  and one ``φ_v`` for values, shared by the key/value heads. A span is used once complete, so nothing leaks.
* **Selection** (eq. 8-12): the compressed attention probabilities ``p_cmp = softmax(q_t K̃_cmp^T)`` are summed over
  the query heads of a GQA group (eq. 10: the group shares its blocks), mapped onto selection blocks of
  ``l' = select_block`` keys by summing the compressed tokens that overlap each block (eq. 9), and the top
  ``n = select_top_n`` blocks are kept (eq. 11), always including ``init_blocks`` initial and ``local_blocks`` local
  blocks (§4.1: "1 initial block and 2 local blocks", counted in ``n``). Attention over the chosen blocks' raw keys is
  :func:`edifice.ops.block_sparse_attention`.
* **Sliding window** (§3.3.3): the last ``w = nsa_window`` keys, :func:`edifice.ops.sdpa` with ``window=w``.
* **Gates**: ``g = sigmoid(x W_g)``, three per query head (the paper's "MLP and sigmoid"; one linear layer as in
  fla's ``NativeSparseAttention``).

The rest is the ``decoder_only`` stack (RoPE on q and k before all branches, as fla does). Decoding keeps the full KV
cache and recomputes the compressed tokens and the selection for every query.

Deviations (docs/design/nsa.md): the three branches share the q/k/v projections (the paper gives each branch its own
keys and values; fla shares them too) -- the compression MLPs still give the compressed branch its own keys and
values; eq. 9's remapping is written as the overlap sum (identical for ``l = l' = d``); the selection passes no
gradient (top-n is discrete, as in the paper).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.config import ArchConfig
from edifice_attention._attention_variants import VariantAttention
from edifice_attention._block_select import key_layout, keys_by_position, n_spans, span_visible, top_blocks
from edifice_attention.configs.nsa import NSAConfig
from edifice_attention.decoder_only import DecoderOnly
from edifice_attention.infllm_v2 import forced_blocks, kernel_block_scores

__all__ = ["NSA", "NSAAttention"]


class NSAAttention(VariantAttention):
    """Native Sparse Attention mixer (module doc): three branches over one KV cache, gated per head."""

    def __init__(
        self,
        *args: Any,
        cmp_size: int,
        cmp_stride: int,
        select_block: int,
        select_top_n: int,
        init_blocks: int,
        local_blocks: int,
        nsa_window: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.cmp_size, self.cmp_stride, self.select_block, self.select_top_n = (
            cmp_size,
            cmp_stride,
            select_block,
            select_top_n,
        )
        self.init_blocks, self.local_blocks, self.nsa_window = init_blocks, local_blocks, nsa_window
        D = self.head_dim
        self.cmp_pos_k = nn.Parameter(torch.zeros(cmp_size, D))  # intra-block position encodings E
        self.cmp_pos_v = nn.Parameter(torch.zeros(cmp_size, D))
        self.cmp_k = nn.Sequential(nn.Linear(cmp_size * D, D, bias=False), nn.SiLU(), nn.Linear(D, D, bias=False))
        self.cmp_v = nn.Sequential(nn.Linear(cmp_size * D, D, bias=False), nn.SiLU(), nn.Linear(D, D, bias=False))
        self.gate_proj = nn.Linear(self.d_model, self.n_heads * 3, bias=False)

    def reset_parameters(self) -> None:
        """Linear defaults; position encodings N(0, 0.02)."""
        super().reset_parameters()
        if hasattr(self, "gate_proj"):
            for layer in (*self.cmp_k, *self.cmp_v, self.gate_proj):
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
            nn.init.normal_(self.cmp_pos_k, std=0.02)
            nn.init.normal_(self.cmp_pos_v, std=0.02)

    def compress(self, keyed: Tensor, pos: Tensor, phi: nn.Module) -> Tensor:
        """``φ`` of every span: ``keyed [B, Hk, P, D]`` -> ``[B, Hk, Nc, D]`` (eq. 7)."""
        spans = keyed.unfold(2, self.cmp_size, self.cmp_stride).transpose(-1, -2)  # (B, Hk, Nc, l, D)
        out: Tensor = phi((spans + pos.to(spans.dtype)).flatten(-2))
        return out

    def branches(self, q: Tensor, k: Tensor, v: Tensor, **masking: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``(o_cmp, o_slc, o_win)``, each ``[B, Hq, Tq, Dv]``, from the cache's keys and sdpa's masking."""
        q_pos, k_pos, k_valid = key_layout(q, k, masking)
        B, Hq, Tq, D = q.shape
        Tk = k.shape[2]
        scale = D**-0.5 if self.scale is None else self.scale
        count = n_spans(Tk, self.cmp_size, self.cmp_stride)
        if count:
            kc = self.compress(keys_by_position(k, k_pos, k_valid, Tk), self.cmp_pos_k, self.cmp_k)
            vc = self.compress(keys_by_position(v, k_pos, k_valid, Tk), self.cmp_pos_v, self.cmp_v)
            visible = span_visible(q_pos, count, self.cmp_size, self.cmp_stride)[:, None]  # (B, 1, Tq, Nc)
            o_cmp: Tensor = ops.sdpa(q, kc, vc, attn_mask=visible, scale=scale)
        else:
            kc, o_cmp = None, q.new_zeros(B, Hq, Tq, v.shape[-1])
        with torch.no_grad():
            score, scored = kernel_block_scores(
                q.detach(),
                k.detach(),
                q_pos,
                k_pos,
                k_valid,
                block_size=self.select_block,
                kernel_size=self.cmp_size,
                kernel_stride=self.cmp_stride,
                scale=scale,
                reduce="sum",
                kernels=None if kc is None else kc.detach(),
            )
            visible_blocks, forced = forced_blocks(
                q_pos, score.shape[-1], self.select_block, self.init_blocks, self.local_blocks
            )
            chosen = top_blocks(score, scored & visible_blocks[:, None], forced[:, None], self.select_top_n)
        o_slc: Tensor = ops.block_sparse_attention(
            q, k, v, chosen, block_size=self.select_block, scale=scale, **masking
        )
        o_win: Tensor = ops.sdpa(q, k, v, scale=scale, **{**masking, "window": self.nsa_window})
        return o_cmp, o_slc, o_win

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **masking: Any) -> Tensor:
        """The three branches stacked on a last axis, ``[B, Hq, Tq, Dv, 3]`` (:meth:`finish` gates them)."""
        return torch.stack(self.branches(q, k, v, **masking), -1)

    def finish(self, out: Tensor, x: Tensor) -> Tensor:
        """Eq. 5: the per-head sigmoid gates ``sigmoid(x W_g)`` mix the stacked branches, then ``o_proj``."""
        B, T, _ = x.shape
        gates = self.gate_proj(x).view(B, T, self.n_heads, 3).sigmoid().transpose(1, 2)  # (B, Hq, T, 3)
        mixed = (out * gates[..., None, :].to(out.dtype)).sum(-1)
        return super().finish(mixed, x)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, cmp={self.cmp_size}/{self.cmp_stride}, select={self.select_block}x"
            f"{self.select_top_n} (init {self.init_blocks}, local {self.local_blocks}), nsa_window={self.nsa_window}"
        )


class NSA(DecoderOnly):
    """The ``decoder_only`` stack with :class:`NSAAttention` mixers."""

    config_class: ClassVar[type[ArchConfig]] = NSAConfig
    config: NSAConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s Native Sparse Attention."""
        c = self.config
        return NSAAttention(
            **self.attention_kwargs(),
            cmp_size=c.cmp_size,
            cmp_stride=c.cmp_stride,
            select_block=c.select_block,
            select_top_n=c.select_top_n,
            init_blocks=c.init_blocks,
            local_blocks=c.local_blocks,
            nsa_window=c.nsa_window,
        )
