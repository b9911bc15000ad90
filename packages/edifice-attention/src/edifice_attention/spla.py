"""SPLA: block sparse attention on the selected key blocks plus residual linear attention on the rest.

Paper: Wang, Friedman, Lei & Wang (2026), "SPLA: Block Sparse Plus Linear Attention for Long Context Modeling",
https://arxiv.org/abs/2601.22379. Only the abstract could be read here; docs/design/spla.md states what was built
from it and which choices are this entry's own.

Per head, keys cut into blocks of ``S = block_stride`` aligned positions; a query at position ``p`` (block ``c``):

* **local blocks** ``c - W + 1 .. c`` (``W = block_window``) are always attended exactly;
* **selection** among the older blocks by a second-order Taylor (cumulant) estimate of each block's softmax mass,
  ``log Σ_{j∈b} e^{s q·k_j} ≈ log n_b + s q·μ_b + ½ s² qᵀ Σ_b q`` (``μ_b``, ``Σ_b`` the mean and covariance of the
  block's keys): the top ``⌈selection_ratio · n_older⌉`` blocks;
* **exact softmax attention** over the local and selected keys: :func:`edifice.ops.sdpa` with that mask;
* **residual linear attention** (RLA) over the unselected keys, by the paper's subtraction: global linear attention
  (:func:`edifice.ops.linear_attention`, a constant-size running state ``Σ k vᵀ``) minus the linear attention of the
  keys that were attended exactly, so unselected blocks are never read: ``o_RLA = s·qᵀ(S_global - S_selected)``;
* ``o = o_sparse + γ_h · o_RLA`` with a learned per-head ``γ`` (zero at init: the layer starts as block-sparse
  attention), then ``W_o``. Queries and keys carry RoPE. Pre-norm RMSNorm blocks with a SwiGLU feed-forward.

``selection_ratio = 1`` selects every block: there is nothing left for RLA and the layer is dense causal softmax
attention (tested). The decoding state is a KV cache of ``max_len`` positions (selection may pick any past block) and
the global linear-attention state.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.rope import RotaryEmbedding, apply_rotary
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_attention._linear_attention import MixerStackBackbone
from edifice_attention.configs.spla import SPLAConfig

__all__ = ["SPLA", "SPLAState", "SparsePlusLinearAttention", "spla_masks"]


@model_output
class SPLAState:
    """Decoding state of one SPLA mixer: the KV cache and the global linear-attention state."""

    keys: Tensor
    """``[B, H, max_len, d]`` rotated keys at their absolute positions."""
    values: Tensor
    """``[B, H, max_len, d]`` values."""
    valid: Tensor
    """``[B, max_len]`` bool: which cache slots hold a token."""
    linear: Tensor
    """``[B, H, d, d]`` fp32: ``Σ_j k_j v_jᵀ`` over every token so far (the global linear attention)."""


def spla_masks(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    k_valid: Tensor,
    *,
    stride: int,
    window_blocks: int,
    ratio: float,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """``(exact [B, H, t, Tk], causal [B, 1, t, Tk])`` bool masks: keys attended exactly, and all visible keys.

    q ``[B, H, t, d]``, k ``[B, H, Tk, d]``, positions ``q_pos [B, t]``, ``k_pos [B, Tk]``, ``k_valid [B, Tk]``.
    """
    B, H, Tk, _ = k.shape
    work = torch.promote_types(q.dtype, torch.float32)
    causal = k_valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])  # (B, t, Tk)
    kb = torch.where(k_valid, k_pos, 0) // stride  # (B, Tk) block of each key
    qb = q_pos // stride  # (B, t)
    local = kb[:, None, :] > qb[:, :, None] - window_blocks
    n_blocks = -(-Tk // stride)
    onehot = (kb[..., None] == torch.arange(n_blocks, device=k.device)) & k_valid[..., None]  # (B, Tk, Nb)
    oh = onehot.to(work)
    count = oh.sum(1)  # (B, Nb)
    kw = k.to(work)
    denom = count.clamp_min(1)[:, None, :, None]
    mean = torch.einsum("btn,bhtd->bhnd", oh, kw) / denom  # μ_b
    second = torch.einsum("btn,bhtd,bhte->bhnde", oh, kw, kw) / denom[..., None]
    cov = second - mean[..., :, None] * mean[..., None, :]  # Σ_b
    qw = q.to(work) * scale
    metric = torch.einsum("bhtd,bhnd->bhtn", qw, mean) + 0.5 * torch.einsum("bhtd,bhnde,bhte->bhtn", qw, cov, qw)
    metric = metric + count.clamp_min(1).log()[:, None, None, :]
    blocks = torch.arange(n_blocks, device=k.device)
    older = (blocks <= qb[..., None] - window_blocks) & (count > 0)[:, None, :]  # (B, t, Nb) candidates
    n_sel = torch.ceil(ratio * older.sum(-1).to(work)).long()  # (B, t)
    ranked = metric.masked_fill(~older[:, None], float("-inf"))
    rank = ranked.argsort(-1, descending=True).argsort(-1)  # 0 = largest estimated mass
    chosen = older[:, None] & (rank < n_sel[:, None, :, None])  # (B, H, t, Nb)
    picked = chosen.gather(3, kb[:, None, None, :].expand(B, H, q.shape[2], Tk))  # (B, H, t, Tk)
    exact = causal[:, None] & (local[:, None] | picked)
    return exact, causal[:, None]


class SparsePlusLinearAttention(nn.Module):
    """The SPLA token mixer of the module doc, with ``init_state``."""

    def __init__(self, config: SPLAConfig) -> None:
        super().__init__()
        c = self.config = config
        self.n_heads, self.head_dim = c.n_heads, c.resolved_head_dim
        inner = c.n_heads * self.head_dim
        self.q_proj = nn.Linear(c.d_model, inner, bias=False)
        self.k_proj = nn.Linear(c.d_model, inner, bias=False)
        self.v_proj = nn.Linear(c.d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, c.d_model, bias=False)
        self.rla_gate = nn.Parameter(torch.zeros(c.n_heads))  # γ_h
        self.rope = RotaryEmbedding(self.head_dim, base=c.rope_theta)
        self.scale = self.head_dim**-0.5

    def reset_parameters(self) -> None:
        """Normal(0, init_std) projections; γ = 0 (the layer starts as block-sparse attention)."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            nn.init.normal_(lin.weight, std=self.config.init_std)
        nn.init.zeros_(self.rla_gate)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SPLAState:
        """An empty KV cache of ``max_len`` (default ``config.max_len``) positions and a zero linear state."""
        w = self.o_proj.weight
        device = w.device if device is None else device
        dtype = w.dtype if dtype is None else dtype
        n = self.config.max_len if max_len is None else max_len
        H, d = self.n_heads, self.head_dim
        return SPLAState(
            keys=torch.zeros(batch_size, H, n, d, device=device, dtype=dtype),
            values=torch.zeros(batch_size, H, n, d, device=device, dtype=dtype),
            valid=torch.zeros(batch_size, n, dtype=torch.bool, device=device),
            linear=torch.zeros(batch_size, H, d, d, device=device, dtype=torch.promote_types(dtype, torch.float32)),
        )

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: SPLAState | None = None
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask`` marks valid positions; ``state`` is updated."""
        c = self.config
        B, T, _ = x.shape
        H, d = self.n_heads, self.head_dim
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        valid = positions >= 0 if mask is None else mask.bool() & (positions >= 0)
        q, k, v = (p(x).view(B, T, H, d).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = self.rope(positions.clamp_min(0))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k = k * valid[:, None, :, None].to(k.dtype)  # a pad is no key (nor a term of the linear state)
        if state is None:
            keys, values, k_pos, k_valid, initial = k, v, positions, valid, None
        else:
            n = state.keys.shape[2]
            slot = positions.clamp(0, n - 1)
            idx = slot[:, None, :, None].expand(B, H, T, d)
            keep = valid[:, None, :, None]
            state.keys.scatter_(2, idx, torch.where(keep, k, state.keys.gather(2, idx)))
            state.values.scatter_(2, idx, torch.where(keep, v, state.values.gather(2, idx)))
            state.valid.scatter_(1, slot, state.valid.gather(1, slot) | valid)
            keys, values, k_valid, initial = state.keys, state.values, state.valid, state.linear
            k_pos = torch.arange(n, device=x.device).expand(B, n)
        exact, _ = spla_masks(
            q,
            keys,
            positions,
            k_pos,
            k_valid,
            stride=c.block_stride,
            window_blocks=c.block_window,
            ratio=c.selection_ratio,
            scale=self.scale,
        )
        o_sparse = ops.sdpa(q, keys, values, attn_mask=exact, scale=self.scale)  # (B, H, T, d)
        # residual linear attention by subtraction: global prefix state minus the exactly-attended keys
        o_global, final = ops.linear_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, scale=self.scale, initial_state=initial
        )
        if state is not None:
            state.linear.copy_(final)
        work = torch.promote_types(q.dtype, torch.float32)
        scores = torch.einsum("bhtd,bhsd->bhts", q.to(work), keys.to(work)) * self.scale * exact.to(work)
        o_selected = torch.einsum("bhts,bhsd->bhtd", scores, values.to(work))
        o_rla = o_global.transpose(1, 2).to(work) - o_selected
        o = o_sparse.to(work) + self.rla_gate.to(work)[:, None, None] * o_rla
        out: Tensor = self.o_proj(o.to(x.dtype).transpose(1, 2).reshape(B, T, H * d))
        return out


class SPLA(MixerStackBackbone):
    """SPLA sequence backbone: pre-norm residual blocks of sparse-plus-linear attention and a SwiGLU feed-forward."""

    config_class: ClassVar[type[ArchConfig]] = SPLAConfig
    config: SPLAConfig

    def build_mixer(self, index: int) -> nn.Module:
        """The SPLA mixer (the same at every depth)."""
        return SparsePlusLinearAttention(self.config)

    def reset_parameters(self) -> None:
        """The stack's normal init, then each mixer's own (γ = 0)."""
        super().reset_parameters()
        for module in self.modules():
            if isinstance(module, SparsePlusLinearAttention):
                module.reset_parameters()
