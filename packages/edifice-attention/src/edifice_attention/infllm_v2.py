"""InfLLM-V2: dense-sparse switchable attention with block selection from fine-grained semantic kernels (MiniCPM4).

MiniCPM Team (2025), "MiniCPM4: Ultra-Efficient LLMs on End Devices", https://arxiv.org/abs/2506.07900, §2.1
(InfLLM v2), and Zhao et al. (2025), "InfLLM-V2: Dense-Sparse Switchable Attention for Seamless Short-to-Long
Adaptation", arXiv:2509.24663. Implemented:

* **No new parameters**: the dense attention's q, k, v, o projections are reused (the "parameter-free" switch);
  the rest is the ``decoder_only`` stack (RoPE, GQA, pre-norm SwiGLU blocks).
* **Semantic kernels**: mean-pooled keys over spans of ``kernel_size`` positions every ``kernel_stride``
  (MiniCPM4: 32 and 16), scored only once complete (``i stride + size - 1 <= p``, so nothing of the future leaks).
* **Block relevance**: per query head, softmax of ``q . k_kernel / sqrt(d)`` over the visible kernels, summed over the
  query heads of a grouped-query group (the group shares one selection, "more fine-grained query grouping"); a
  block's score is the *maximum* over the kernels that overlap it ("the relevance score between a query and a block
  is the maximum of its scores with the semantic kernels in the block").
* **Selection**: the ``init_blocks`` initial blocks and the ``local_blocks`` most recent blocks (the query's own
  included) are always kept; the best-scoring other visible blocks fill up to ``top_k`` blocks in all.
* **Dense-sparse switch**: a query that sees at most ``dense_len`` keys attends all of them (dense attention);
  longer contexts use the selection above. Both go through :func:`edifice.ops.block_sparse_attention`.

Deviations (docs/design/infllm_v2.md): the switch is decided per query position (``p + 1 <= dense_len``) rather than
per sequence, so that stepping reproduces ``forward`` exactly; the local window is counted in aligned blocks
(``local_blocks``) rather than tokens; the kernel softmax is the exact one, not the report's LogSumExp estimate (an
efficiency device of the kernel); no gradient through the discrete selection.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice_attention._block_select import (
    BlockSelectAttention,
    keys_by_position,
    n_spans,
    span_block_overlap,
    span_visible,
    top_blocks,
)
from edifice_attention.configs.infllm_v2 import InfLLMV2Config
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["InfLLMV2", "InfLLMV2Attention", "kernel_block_scores"]


def kernel_block_scores(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    k_valid: Tensor,
    *,
    block_size: int,
    kernel_size: int,
    kernel_stride: int,
    scale: float,
    reduce: str,
    kernels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Group-summed kernel attention probabilities onto blocks: ``(score [B, Hk, Tq, Nb], scored [B, Hk, Tq, Nb])``.

    Kernels are spans of ``kernel_size`` keys every ``kernel_stride``: ``kernels [B, Hk, Nc, D]`` when given (NSA's
    compressed keys), else the mean of each span. ``reduce="max"`` (InfLLM-V2) or ``"sum"`` (NSA eq.
    9) over the visible kernels that overlap each block. ``scored`` marks blocks that have such a kernel.
    """
    B, Hq, Tq, _ = q.shape
    Hk, Tk = k.shape[1], k.shape[2]
    n_blocks = -(-Tk // block_size)
    count = n_spans(Tk, kernel_size, kernel_stride)
    if count == 0:
        zeros = q.new_zeros(B, Hk, Tq, n_blocks, dtype=torch.float32)
        return zeros, zeros.bool()
    if kernels is None:
        keyed = keys_by_position(k, k_pos, k_valid, Tk)
        kernels = keyed.unfold(2, kernel_size, kernel_stride).mean(-1)  # (B, Hk, Nc, D)
    scores = torch.einsum("bhtd,bhnd->bhtn", q.float(), kernels.float().repeat_interleave(Hq // Hk, 1)) * scale
    visible = span_visible(q_pos, count, kernel_size, kernel_stride)[:, None]  # (B, 1, Tq, Nc)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1).nan_to_num(0.0)
    grouped = probs.reshape(B, Hk, Hq // Hk, Tq, count).sum(2)  # (B, Hk, Tq, Nc): shared across the GQA group
    overlap = span_block_overlap(count, kernel_size, kernel_stride, n_blocks, block_size, q.device)  # (Nc, Nb)
    use = visible[..., None] & overlap  # (B, 1, Tq, Nc, Nb)
    if reduce == "max":
        score = grouped[..., None].masked_fill(~use, float("-inf")).amax(-2)
    else:
        score = (grouped[..., None] * use).sum(-2)
    return score, use.any(-2).expand_as(score)


def forced_blocks(
    q_pos: Tensor, n_blocks: int, block_size: int, init_blocks: int, local_blocks: int
) -> tuple[Tensor, Tensor]:
    """``(visible, forced)`` ``[B, Tq, Nb]`` bool: blocks that have started, and the initial + local ones among them."""
    blocks = torch.arange(n_blocks, device=q_pos.device)
    current = q_pos[..., None] // block_size
    visible = blocks <= current
    return visible, visible & ((blocks < init_blocks) | (blocks > current - local_blocks))


class InfLLMV2Attention(BlockSelectAttention):
    """Dense attention up to ``dense_len`` keys, else attention over the initial, local and top kernel-scored blocks."""

    def __init__(
        self,
        *args: Any,
        kernel_size: int,
        kernel_stride: int,
        top_k: int,
        init_blocks: int,
        local_blocks: int,
        dense_len: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kernel_size, self.kernel_stride, self.top_k = kernel_size, kernel_stride, top_k
        self.init_blocks, self.local_blocks, self.dense_len = init_blocks, local_blocks, dense_len

    def select(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor, k_valid: Tensor) -> Tensor:
        """Group-shared selection ``[B, Hk, Tq, Nb]`` (the module doc's rules)."""
        bs = self.block_size
        score, scored = kernel_block_scores(
            q,
            k,
            q_pos,
            k_pos,
            k_valid,
            block_size=bs,
            kernel_size=self.kernel_size,
            kernel_stride=self.kernel_stride,
            scale=q.shape[-1] ** -0.5 if self.scale is None else self.scale,
            reduce="max",
        )
        visible, forced = forced_blocks(q_pos, score.shape[-1], bs, self.init_blocks, self.local_blocks)
        chosen = top_blocks(score, scored & visible[:, None], forced[:, None], self.top_k)
        dense = (q_pos + 1 <= self.dense_len)[:, None, :, None] & visible[:, None]
        out: Tensor = chosen | dense
        return out

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel={self.kernel_size}/{self.kernel_stride}, top_k={self.top_k}, "
            f"init_blocks={self.init_blocks}, local_blocks={self.local_blocks}, dense_len={self.dense_len}"
        )


class InfLLMV2(DecoderOnly):
    """The ``decoder_only`` stack with :class:`InfLLMV2Attention` mixers."""

    config_class: ClassVar[type[ArchConfig]] = InfLLMV2Config
    config: InfLLMV2Config

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s InfLLM-V2 attention."""
        c = self.config
        return InfLLMV2Attention(
            **self.attention_kwargs(),
            block_size=c.sparse_block_size,
            kernel_size=c.kernel_size,
            kernel_stride=c.kernel_stride,
            top_k=c.sparse_top_k,
            init_blocks=c.init_blocks,
            local_blocks=c.local_blocks,
            dense_len=c.dense_len,
        )
