"""Multi-head self- and cross-attention with grouped-query heads, RoPE, qk-norm, windows, soft-capping and KV caches.

Vaswani et al. (2017), "Attention Is All You Need", https://arxiv.org/abs/1706.03762:

* eq. (1) ``Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V``, computed by :func:`edifice.ops.sdpa`;
* §3.2.2 ``MultiHead(Q, K, V) = Concat(head_1..head_h) W^O`` with ``head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)``,
  the per-head projections fused into ``q_proj``, ``k_proj``, ``v_proj`` and ``W^O`` in ``o_proj`` (Llama names, so
  transformers checkpoints map one to one).

Grouped-query attention (Ainslie et al. 2023, https://arxiv.org/abs/2305.13245, §2.2): ``n_kv_heads`` key/value heads,
each shared by ``n_heads // n_kv_heads`` query heads (1 is multi-query attention). Options: rotary position embedding
(a :class:`~edifice.blocks.rope.RotaryEmbedding` applied to q and k), per-head RMS qk-norm before RoPE (OLMo-2,
Qwen3), Mistral's sliding window, Gemma-2 logit soft-capping and dropout on the attention probabilities.

Masks are decided from absolute positions (see :mod:`edifice.ops.attention`): ``mask [B, T]`` marks valid (non-pad)
positions, ``positions`` gives each position's index in its sequence, and a KV cache stores both for its keys.

Legend: B batch, T new positions, S context length, L cached keys, Hq/Hk query and key/value heads, D head size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.kv_cache import DynamicKVCache, KVCache, SlidingWindowKVCache, StaticKVCache
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding, apply_rotary

__all__ = ["Attention", "CrossAttention"]


class _MultiHeadAttention(nn.Module):
    """Projections, head split/merge, qk-norm and the ``ops.sdpa`` call shared by self- and cross-attention."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        d_kv_in: int | None = None,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        out_bias: bool | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        softcap: float | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model <= 0 or n_heads <= 0 or n_kv_heads <= 0:
            raise ValueError(f"{name}: d_model, n_heads, n_kv_heads must be > 0, got {d_model}/{n_heads}/{n_kv_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"{name}: n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"{name}: n_heads={n_heads} must divide d_model={d_model}, or pass head_dim")
            head_dim = d_model // n_heads
        if softcap is not None and softcap <= 0:
            raise ValueError(f"{name}: softcap must be > 0, got {softcap}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must lie in [0, 1), got {dropout}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.softcap = softcap
        self.dropout = dropout
        self.scale = scale
        d_kv_in = d_model if d_kv_in is None else d_kv_in
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_kv_in, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_kv_in, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias if out_bias is None else out_bias)
        self.q_norm = get_norm("rmsnorm", head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = get_norm("rmsnorm", head_dim, eps=norm_eps) if qk_norm else None

    def reset_parameters(self) -> None:
        """PyTorch's default ``nn.Linear`` initialisation; architectures apply their paper's scheme on top."""
        for module in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.q_norm, self.k_norm):
            if module is not None:
                module.reset_parameters()  # type: ignore[operator]

    def _split(self, proj: nn.Linear, x: Tensor, n_heads: int, norm: nn.Module | None) -> Tensor:
        """``x [B, T, d] -> [B, n_heads, T, D]``, RMS-normalised per head when qk-norm is on."""
        B, T, _ = x.shape
        heads: Tensor = proj(x).view(B, T, n_heads, self.head_dim)
        if norm is not None:
            heads = norm(heads)
        return heads.transpose(1, 2)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, **masking: Any) -> Tensor:
        """``sdpa`` over heads then ``o_proj``: q ``[B, Hq, T, D]``, k/v ``[B, Hk, L, D]`` -> ``[B, T, d_model]``."""
        out: Tensor = ops.sdpa(
            q,
            k,
            v,
            scale=self.scale,
            softcap=self.softcap,
            dropout_p=self.dropout if self.training else 0.0,
            **masking,
        )  # (B, Hq, T, D)
        return self._merge_heads(out)

    def _merge_heads(self, out: Tensor) -> Tensor:
        """``o_proj`` of the concatenated heads: ``[B, Hq, T, Dv] -> [B, T, d_model]`` (MultiHead, §3.2.2)."""
        B, _, T, _ = out.shape
        y: Tensor = self.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        return y

    def _check_x(self, x: Tensor, what: str, width: int) -> None:
        if x.dim() != 3 or x.shape[-1] != width:
            raise ValueError(f"{type(self).__name__}: {what} expected [B, T, {width}], got {list(x.shape)}")

    def extra_repr(self) -> str:
        extra = f", softcap={self.softcap}" if self.softcap is not None else ""
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}{extra}"


def _check_mask(name: str, mask: Tensor | None, B: int, T: int) -> None:
    if mask is not None and (mask.shape != (B, T) or mask.dtype != torch.bool):
        got = f"{str(mask.dtype).removeprefix('torch.')} {list(mask.shape)}"
        raise ValueError(f"{name}: mask expected a bool tensor [{B}, {T}] (True = valid), got {got}")


class Attention(_MultiHeadAttention):
    """Multi-head / grouped-query self-attention over ``x [B, T, d_model]``, causal by default, with a KV cache."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = True,
        window: int | None = None,
        rope: RotaryEmbedding | None = None,
        bias: bool = False,
        out_bias: bool | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        softcap: float | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
        ring_cache: bool = False,
    ) -> None:
        super().__init__(
            d_model,
            n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            bias=bias,
            out_bias=out_bias,
            qk_norm=qk_norm,
            norm_eps=norm_eps,
            softcap=softcap,
            dropout=dropout,
            scale=scale,
        )
        if window is not None and window <= 0:
            raise ValueError(f"Attention: window must be > 0, got {window}")
        if rope is not None and rope.head_dim != self.head_dim:
            raise ValueError(f"Attention: rope.head_dim={rope.head_dim} must equal head_dim={self.head_dim}")
        if ring_cache and (window is None or not causal):
            raise ValueError(f"Attention: ring_cache=True needs a causal window, got {window=}, {causal=}")
        self.causal = causal
        self.window = window
        self.rope = rope
        #: ``init_state`` gives a constant-size ring of ``window`` slots (:class:`SlidingWindowKVCache`).
        self.ring_cache = ring_cache

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
    ) -> Tensor:
        """Attend ``x [B, T, d_model]`` to itself (and to the cached keys in ``state``); returns ``[B, T, d_model]``.

        ``mask [B, T]`` (bool, True = valid) hides padded keys. ``positions [T]`` or ``[B, T]`` are the absolute
        positions of ``x`` (default ``0 .. T-1``; required with a ``state``), used by RoPE, causality and the window.
        ``state`` is updated in place with this call's keys and values.
        """
        q, k, v = self._qkv(x, mask=mask, positions=positions, state=state)
        k, v, masking = self._fetch(k, v, mask=mask, positions=positions, state=state)
        return self._attend(q, k, v, **masking)

    def _check_call(self, x: Tensor, mask: Tensor | None, positions: Tensor | None, state: Any) -> None:
        """The input checks of :meth:`forward` (shapes of ``x`` and ``mask``; positions given with a cache)."""
        self._check_x(x, "x", self.d_model)
        B, T, _ = x.shape
        _check_mask(type(self).__name__, mask, B, T)
        if state is not None and positions is None:
            raise ValueError(
                f"{type(self).__name__}: positions are required with a KV cache state (the absolute index of x)"
            )

    def _rotate(self, x: Tensor, positions: Tensor | None, *heads: Tensor) -> tuple[Tensor, ...]:
        """RoPE at ``positions`` (default ``0 .. T-1``) on each of ``heads`` ``[B, H, T, D]`` (unchanged without)."""
        if self.rope is None:
            return heads
        rope_positions = positions if positions is not None else torch.arange(x.shape[1], device=x.device)
        cos, sin = self.rope(rope_positions)  # (T, R) or (B, T, R)
        return tuple(apply_rotary(h, cos, sin) for h in heads)

    def _qkv(
        self, x: Tensor, *, mask: Tensor | None, positions: Tensor | None, state: Any
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Checked ``x [B, T, d_model]`` -> q ``[B, Hq, T, D]``, k and v ``[B, Hk, T, D]`` (qk-norm, RoPE applied)."""
        self._check_call(x, mask, positions, state)
        q = self._split(self.q_proj, x, self.n_heads, self.q_norm)  # (B, Hq, T, D)
        k = self._split(self.k_proj, x, self.n_kv_heads, self.k_norm)  # (B, Hk, T, D)
        v = self._split(self.v_proj, x, self.n_kv_heads, None)  # (B, Hk, T, D)
        q, k = self._rotate(x, positions, q, k)
        return q, k, v

    def _fetch(
        self, k: Tensor, v: Tensor, *, mask: Tensor | None, positions: Tensor | None, state: KVCache | None
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """The keys and values the new queries attend (the cache's, after writing these) and the masking keywords."""
        masking: dict[str, Any] = {"causal": self.causal, "window": self.window}
        if state is not None:
            # positions checked above; a ring buffer may return more slots than it keeps
            k, v, k_positions, attn_mask = state.update_and_fetch(k, v, positions, mask)  # type: ignore[arg-type]
            masking.update(q_positions=positions, k_positions=k_positions, attn_mask=attn_mask)  # k, v (B, Hk, L, D)
        else:
            # Without a cache, None positions mean 0..T-1, which is also sdpa's default (and keeps fast paths open).
            masking.update(q_positions=positions, k_positions=positions)
            if mask is not None:
                masking["attn_mask"] = mask[:, None, None, :]  # (B, 1, 1, T) key padding
        return k, v, masking

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KV cache: a ring of ``window`` slots (``ring_cache``, any ``max_len``), a :class:`StaticKVCache` of
        ``max_len`` slots, or a :class:`DynamicKVCache` if ``max_len`` is None."""
        weight = self.k_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        if self.ring_cache:
            assert self.window is not None
            return SlidingWindowKVCache.empty(
                batch_size, self.n_kv_heads, self.head_dim, self.window, device=device, dtype=dtype
            )
        if max_len is None:
            return DynamicKVCache.empty(batch_size, self.n_kv_heads, self.head_dim, device=device, dtype=dtype)
        return StaticKVCache.empty(batch_size, self.n_kv_heads, self.head_dim, max_len, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        window = f", window={self.window}" if self.window is not None else ""
        return f"{super().extra_repr()}, causal={self.causal}{window}"


class CrossAttention(_MultiHeadAttention):
    """Queries from ``x [B, T, d_model]``, keys and values from a context ``[B, S, d_context]`` (no causality)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        d_context: int | None = None,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        out_bias: bool | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        softcap: float | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__(
            d_model,
            n_heads,
            d_kv_in=d_context,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            bias=bias,
            out_bias=out_bias,
            qk_norm=qk_norm,
            norm_eps=norm_eps,
            softcap=softcap,
            dropout=dropout,
            scale=scale,
        )
        self.d_context = d_model if d_context is None else d_context

    def forward(self, x: Tensor, context: Tensor, *, context_mask: Tensor | None = None) -> Tensor:
        """Attend ``x [B, T, d_model]`` to ``context [B, S, d_context]``; ``context_mask [B, S]`` marks valid ones."""
        self._check_x(x, "x", self.d_model)
        self._check_x(context, "context", self.d_context)
        B, S, _ = context.shape
        if x.shape[0] != B:
            raise ValueError(f"CrossAttention: x has batch {x.shape[0]} but context has batch {B}")
        _check_mask("CrossAttention", context_mask, B, S)
        q = self._split(self.q_proj, x, self.n_heads, self.q_norm)  # (B, Hq, T, D)
        k = self._split(self.k_proj, context, self.n_kv_heads, self.k_norm)  # (B, Hk, S, D)
        v = self._split(self.v_proj, context, self.n_kv_heads, None)  # (B, Hk, S, D)
        attn_mask = context_mask[:, None, None, :] if context_mask is not None else None  # (B, 1, 1, S)
        return self._attend(q, k, v, attn_mask=attn_mask)
