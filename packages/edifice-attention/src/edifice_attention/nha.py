"""NHA: Native Hybrid Attention, long-term memory slots and a sliding window of tokens under one softmax.

Paper: Du, Hu, Zhang, Sun & Cheng (2025), "Native Hybrid Attention for Efficient Sequence Modeling",
https://arxiv.org/abs/2510.07019 (docs/design/nha.md gives the equations as implemented and the choices made).

Per head, with ``m`` slots, window ``w``, ``q_t, k_t, v_t = SiLU(x_t W_{q,k,v})`` and the slot forget gate
``α_t = σ(x_t W_α + b)^{1/τ} ∈ (0, 1)^m`` (GSA's gated slot update, Zhang et al. 2024, arXiv:2409.07146)::

    a token leaves the window when it is w positions old, and is written into the slots then:
        K̃ <- Diag(α_j) K̃ + (1 - α_j) ⊗ k_j,     Ṽ <- Diag(α_j) Ṽ + (1 - α_j) ⊗ v_j        (j = t - w)
    one softmax over the slots and the window (the intra-layer hybrid):
        o_t = softmax([K̃_t q_t ; k_{t-w+1..t} q_t] / sqrt(d)) [Ṽ_t ; v_{t-w+1..t}]
    y_t = o_t W_o

So the weights of long-term memory and exact recent tokens compete in one normalisation, with no fusion parameter;
``w = 0`` is a pure slot (linear-RNN) memory read by softmax, ``w >= T`` full causal attention, ``m = 0`` sliding-window
attention (all three are tested). Slots that have received no token yet are masked out of the softmax (an empty
memory holds nothing to attend to). Blocks: pre-norm RMSNorm, NHA, SwiGLU feed-forward.

Training path: the slot states of every position come from :func:`edifice.ops.linear_recurrence` (a parallel scan
over the evicted tokens), the window scores are a banded score matrix; decoding keeps the slots and the last
``w - 1`` tokens (a constant-size state). Deviations and open choices (the paper's code was not readable here): the
scale ``1/sqrt(d)`` applies to slots and window alike; the read-out is a plain ``W_o`` (no output gate or norm); no
position encoding (the window's order and the slots' recency carry position). See docs/design/nha.md.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_attention._linear_attention import MixerStackBackbone
from edifice_attention.configs.nha import NHAConfig

__all__ = ["NHA", "NHAState", "NativeHybridAttention", "native_hybrid_attention"]


@model_output
class NHAState:
    """Decoding state of one NHA mixer: the slots and the tokens still inside the window (constant size)."""

    slots: Tensor
    """``[B, H, m, d_k + d_v]``: the key slots K̃ and value slots Ṽ side by side (fp32)."""
    filled: Tensor
    """``[B]`` bool: whether any token has been written into the slots yet."""
    keys: Tensor
    """``[B, w-1, H, d]``: the keys of the last ``w - 1`` tokens (the window of the next query, besides itself)."""
    values: Tensor
    """``[B, w-1, H, d]``: their values."""
    log_gates: Tensor
    """``[B, w-1, H, m]``: their slot gates ``log α`` (used when they leave the window)."""
    positions: Tensor
    """``[B, w-1]`` int64: their absolute positions (-1: empty)."""
    valid: Tensor
    """``[B, w-1]`` bool: which of those entries hold a token."""


def native_hybrid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    valid: Tensor,
    *,
    window: int,
    slots0: Tensor | None = None,
    filled0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """NHA over entries ``k, v [B, E, H, d]`` (gates ``log_alpha [B, E, H, m]``) for queries ``q [B, t, H, d]``.

    Entries are in position order (``k_pos [B, E]``, ``valid [B, E]``); a query at ``q_pos`` sees the valid entries
    with ``q_pos - w < pos <= q_pos`` in its window and the slots after writing every valid entry with ``pos <= q_pos
    - w``, starting from ``slots0 [B, H, m, 2d]``. Returns ``(o [B, t, H, d], slot states [B, E + 1, H, m, 2d] (index 0
    = slots0), filled-before [B, E + 1])``.
    """
    B, E, H, d = k.shape
    m = log_alpha.shape[-1]
    work = torch.promote_types(q.dtype, torch.float32)
    scale = d**-0.5
    if slots0 is None:
        slots0 = q.new_zeros(B, H, m, 2 * d, dtype=work)
    if filled0 is None:
        filled0 = torch.zeros(B, dtype=torch.bool, device=q.device)
    # slot recurrence over the entries: K̃ <- α K̃ + (1 - α) k (identity on invalid entries)
    la = torch.where(valid[..., None, None], log_alpha.to(work), 0.0)  # (B, E, H, m)
    alpha = la.exp()[..., None]  # (B, E, H, m, 1)
    kv = torch.cat([k, v], -1).to(work)[:, :, :, None, :]  # (B, E, H, 1, 2d)
    write = (1 - alpha) * kv * valid[:, :, None, None, None].to(work)
    states = ops.linear_recurrence(alpha, write, slots0.to(work)).to(work)  # (B, E, H, m, 2d)
    states = torch.cat([slots0.to(work)[:, None], states], 1)  # index e + 1: after entry e
    filled = torch.cat([filled0[:, None], filled0[:, None] | valid.cumsum(1).gt(0)], 1)  # (B, E + 1)
    # which slot state each query reads: after the last valid entry that has left its window
    left = valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None] - window)  # (B, t, E)
    idx = (left.long() * torch.arange(1, E + 1, device=q.device)).amax(-1)  # (B, t): 0 = slots0
    read = states.gather(1, idx[:, :, None, None, None].expand(B, idx.shape[1], H, m, 2 * d))  # (B, t, H, m, 2d)
    has_slots = filled.gather(1, idx)  # (B, t)
    k_slot, v_slot = read[..., :d], read[..., d:]
    qw = q.to(work)
    s_slot = torch.einsum("bthd,bthmd->bhtm", qw, k_slot) * scale
    s_slot = s_slot.masked_fill(~has_slots[:, None, :, None], float("-inf"))
    in_window = valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])
    in_window &= k_pos[:, None, :] > q_pos[:, :, None] - window  # (B, t, E)
    s_win = torch.einsum("bthd,behd->bhte", qw, k.to(work)) * scale
    s_win = s_win.masked_fill(~in_window[:, None], float("-inf"))
    scores = torch.cat([s_slot, s_win], -1)  # one softmax over slots and window
    seen = torch.isfinite(scores).any(-1, keepdim=True)
    p = torch.where(seen, scores, 0.0).softmax(-1) * seen  # a query that sees nothing returns zeros
    o = torch.einsum("bhtm,bthmd->bthd", p[..., :m], v_slot) + torch.einsum("bhte,behd->bthd", p[..., m:], v.to(work))
    return o.to(q.dtype), states, filled


class NativeHybridAttention(nn.Module):
    """The NHA token mixer of the module doc, with ``init_state``."""

    def __init__(self, config: NHAConfig) -> None:
        super().__init__()
        c = self.config = config
        self.n_heads, self.head_dim = c.n_heads, c.head_dim
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.gate_proj = nn.Linear(c.d_model, c.n_heads * c.num_slots, bias=True) if c.num_slots else None
        self.o_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) projections; the gate bias starts at ``gate_init``."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.gate_proj, self.o_proj):
            if lin is not None:
                nn.init.normal_(lin.weight, std=self.config.init_std)
        if self.gate_proj is not None:
            nn.init.constant_(self.gate_proj.bias, self.config.gate_init)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> NHAState:
        """Empty slots and an empty window buffer of ``w - 1`` entries: constant size."""
        c = self.config
        device = self.o_proj.weight.device if device is None else device
        dtype = self.o_proj.weight.dtype if dtype is None else dtype
        W, H, d, m = max(c.window_size - 1, 0), c.n_heads, c.head_dim, c.num_slots
        work = torch.promote_types(dtype, torch.float32)
        return NHAState(
            slots=torch.zeros(batch_size, H, m, 2 * d, device=device, dtype=work),
            filled=torch.zeros(batch_size, dtype=torch.bool, device=device),
            keys=torch.zeros(batch_size, W, H, d, device=device, dtype=dtype),
            values=torch.zeros(batch_size, W, H, d, device=device, dtype=dtype),
            log_gates=torch.zeros(batch_size, W, H, m, device=device, dtype=work),
            positions=torch.full((batch_size, W), -1, device=device, dtype=torch.long),
            valid=torch.zeros(batch_size, W, dtype=torch.bool, device=device),
        )

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: NHAState | None = None
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask`` marks valid positions; ``state`` is updated."""
        c = self.config
        B, T, _ = x.shape
        H, d, m = self.n_heads, self.head_dim, c.num_slots
        q, k, v = (F.silu(p(x)).view(B, T, H, d) for p in (self.q_proj, self.k_proj, self.v_proj))
        g = x.new_zeros(B, T, H, 0) if self.gate_proj is None else self.gate_proj(x).view(B, T, H, m)
        log_alpha = F.logsigmoid(g.float() if g.dtype != torch.float64 else g) / c.gate_logit_normalizer
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        valid = valid & (positions >= 0)
        if state is None:
            o, _, _ = native_hybrid_attention(q, k, v, log_alpha, positions, positions, valid, window=c.window_size)
        else:
            W = state.keys.shape[1]
            ks, vs = torch.cat([state.keys, k], 1), torch.cat([state.values, v], 1)
            las = torch.cat([state.log_gates, log_alpha.to(state.log_gates.dtype)], 1)
            pos, ok = torch.cat([state.positions, positions], 1), torch.cat([state.valid, valid], 1)
            o, states, filled = native_hybrid_attention(
                q, ks, vs, las, positions, pos, ok, window=c.window_size, slots0=state.slots, filled0=state.filled
            )
            # the next query sits one past the last valid position: entries at or before next - w leave the window
            nxt = torch.where(ok, pos, -1).amax(1) + 1  # (B,)
            gone = ok & (pos <= nxt[:, None] - c.window_size)
            idx = (gone.long() * torch.arange(1, W + T + 1, device=x.device)).amax(-1)  # (B,)
            state.slots.copy_(states.gather(1, idx[:, None, None, None, None].expand(B, 1, *states.shape[2:]))[:, 0])
            state.filled.copy_(filled.gather(1, idx[:, None])[:, 0])
            if W:
                state.keys.copy_(ks[:, -W:])
                state.values.copy_(vs[:, -W:])
                state.log_gates.copy_(las[:, -W:])
                state.positions.copy_(pos[:, -W:])
                state.valid.copy_(ok[:, -W:] & ~gone[:, -W:])
        out: Tensor = self.o_proj(o.reshape(B, T, H * d))
        return out


class NHA(MixerStackBackbone):
    """NHA sequence backbone: pre-norm residual blocks of native hybrid attention and a SwiGLU feed-forward."""

    config_class: ClassVar[type[ArchConfig]] = NHAConfig
    config: NHAConfig

    def build_mixer(self, index: int) -> nn.Module:
        """The NHA mixer (the same window at every depth; the paper varies it per layer for inter-layer hybrids)."""
        return NativeHybridAttention(self.config)
