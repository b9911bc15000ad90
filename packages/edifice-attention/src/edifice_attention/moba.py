"""MoBA: Mixture of Block Attention -- each query attends its own block and the top-k past blocks by a mean-key gate.

Lu et al. (2025), "MoBA: Mixture of Block Attention for Long-Context LLMs", https://arxiv.org/abs/2502.13189.
Implemented (§2.2): the keys are cut into blocks ``I_i`` of ``B = block_size`` positions; a query ``q`` scores each
block by ``s_i = <q, mean_pool(K[I_i])>`` (eq. 6), keeps the top ``k`` (eq. 5, ``g_i = 1`` for the chosen), and
attends softmax-normalised over the union of the chosen blocks, ``MoBA(q, K, V) = Softmax(q K[I]^T) V[I]`` (eq. 3).
Causality (§2.2, "Causality: Preserving Autoregressive Property"): blocks after the query's block are never chosen
(``s_i = -inf``), the query's *current* block is always chosen (``g = 1``) and causally masked inside. So the top-k
counts the current block plus at most ``k - 1`` past blocks, as in the authors' ``moba_naive`` and fla's ``MoBA``
(``moba_topk`` "including the local block"). Selection is per query head (Hs = Hq).

The attention over the chosen blocks is :func:`edifice.ops.block_sparse_attention`; the rest is the ``decoder_only``
stack (RoPE on q and k before gating, as in the authors' code, which gates on the rotated keys). Decoding keeps the
full KV cache (any past block may be chosen) and recomputes the gate for every new query.

Deviations: the gate scores a past block only once it is complete (past blocks always are: only the current block
can be partial, and it is forced); selection is a discrete choice and passes no gradient, as in the paper.
``top_k >= ceil(T / block_size)`` selects every block: the layer is dense causal attention (tested).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice_attention._block_select import BlockSelectAttention, keys_by_position, n_spans, top_blocks
from edifice_attention.configs.moba import MoBAConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["MoBA", "MoBAAttention", "moba_selection"]


def moba_selection(
    q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor, k_valid: Tensor, *, block_size: int, top_k: int
) -> Tensor:
    """``[B, Hq, Tq, Nb]``: the query's block and the ``top_k - 1`` past blocks of largest ``q . mean(K_block)``."""
    Hq, Hk, Tk = q.shape[1], k.shape[1], k.shape[2]
    n_blocks = -(-Tk // block_size)
    keyed = keys_by_position(k, k_pos, k_valid, n_blocks * block_size)  # (B, Hk, Nb*bs, D)
    full = n_spans(Tk, block_size, block_size)
    means = (
        keyed.reshape(*keyed.shape[:2], n_blocks, block_size, -1).float().mean(3)
    )  # (B, Hk, Nb, D) mean-pooled block keys
    gate = torch.einsum("bhtd,bhnd->bhtn", q.float(), means.repeat_interleave(Hq // Hk, 1))  # eq. 6, per query head
    blocks = torch.arange(n_blocks, device=q.device)
    current = q_pos[..., None] // block_size  # (B, Tq, 1)
    past = (blocks < current) & (blocks < full)
    return top_blocks(gate, past[:, None], (blocks == current)[:, None], top_k)


class MoBAAttention(BlockSelectAttention):
    """Causal attention over the current block and the top-k past blocks by the mean-key gate (per query head)."""

    def __init__(self, *args: Any, top_k: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.top_k = top_k

    def select(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor, k_valid: Tensor) -> Tensor:
        """MoBA's gate: :func:`moba_selection`."""
        return moba_selection(q, k, q_pos, k_pos, k_valid, block_size=self.block_size, top_k=self.top_k)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, top_k={self.top_k}"


class MoBA(DecoderOnly):
    """The ``decoder_only`` stack with :class:`MoBAAttention` mixers."""

    config_class: ClassVar[type[ArchConfig]] = MoBAConfig
    config: MoBAConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s MoBA attention."""
        c = self.config
        return MoBAAttention(**self.attention_kwargs(), block_size=c.moba_block_size, top_k=c.moba_top_k)
