"""Hymba: attention heads and SSM (Mamba) heads in parallel in every layer, learnable meta tokens, local attention.

Each layer is ``h + Mixer(RMSNorm(h))`` then ``h + SwiGLU(RMSNorm(h))``. The mixer is Hymba's hybrid-head module: the
same input feeds attention heads (RoPE, grouped-query, no output projection of their own) and Mamba heads (the
selective SSM of Mamba-1 with its causal convolution and SiLU gate, no output projection of its own); each branch's
output is RMS-normalised, rescaled per channel by a learnable ``β``, the two are averaged and projected back by one
``W_out``. Learnable meta tokens are prepended to every sequence and seen by every position. Most layers use
sliding-window attention (meta tokens always visible); the first, middle and last are global. Local layers share
their keys and values in pairs (below).

Paper: Xin Dong, Yonggan Fu, Shizhe Diao, Wonmin Byeon, Zijia Chen, Ameya Sunil Mahabaleshwarkar, Shih-Yang Liu,
Matthijs Van Keirsbilck, Min-Hung Chen, Yoshi Suhara, Yingyan Lin, Jan Kautz and Pavlo Molchanov, "Hymba: A
Hybrid-head Architecture for Small Language Models", 2024, https://arxiv.org/abs/2411.13676 (ICLR 2025).

Equations (§2.1, the fused hybrid-head module; written out in ``docs/design/hymba.md``)::

    X̃ = [R, X]                                                     meta tokens R prepended
    M_att X̃ = softmax(Q K^T / sqrt(d_k) + mask) V                    attention heads, Q, K, V = X̃ W^Q, X̃ W^K, X̃ W^V
    M_ssm X̃ = G ⊙ SSM(A, B, C, Δ)(SiLU(conv(X̃ W^SSM))),  G = SiLU(X̃ W^G)      Mamba heads (edifice_ssm MambaMixer)
    Y = W_out (β_1 ⊙ norm(M_att X̃) + β_2 ⊙ norm(M_ssm X̃)) / 2        normalised, rescaled, averaged (§2.1)

``mask`` is causal, restricted in local layers to the last ``window`` positions plus the meta tokens. ``β_1``
and ``β_2`` are the gains of the two RMSNorms (initialised to 1); the released code averages (``/ 2``), which the
paper's sum absorbs into ``β``.

Cross-layer KV sharing (§2.3, after Brandon et al.'s cross-layer attention): the layers of a group
(``kv_reuse_groups``; by default consecutive local layers in pairs, global layers alone, as the released config's
``kv_reuse_group``) attend to the keys and values their first layer (the producer) computed -- rotated, and in
decoding read from the producer's cache. The other layers (consumers) project queries only and keep no KV cache, so
the cache and the K/V projections shrink by the number of consumers (32 layers: 17 caches instead of 32).

Decoding: a layer's state is its KV cache (``DynamicKVCache``/``StaticKVCache``, ``M`` extra slots for the meta
tokens; none for a consumer) and the Mamba heads' convolution and SSM state. ``init_state`` marks the meta tokens as
pending and the first ``step`` (the prefill) prepends them, so prefill + steps reproduce ``forward`` at every
position.

Padding: each row's leading pads are moved in front of the meta tokens before the layers (and back after), so both
branches see ``[R, x_1, x_2, ...]`` exactly as without padding (attention masks pads; the Mamba heads give them zero
input and ``Δ = 0``); left- and right-padded batches equal the unpadded runs, in ``forward`` and in the prefill.

Initialisation: PyTorch's default for the projections, Mamba's own for the SSM heads (S4D-real ``A``, log-uniform
``Δ``, ``D = 1``), unit norm gains (``β = 1``), meta tokens ``N(0, 1)`` (the released code's ``torch.randn``), the
token embedding ``N(0, init_std^2)``.

Deviations: no extra RMSNorms on Δ/B/C inside the Mamba heads (an option of the released code the paper does not
describe).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone, SequenceOutput, SequenceState
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.kv_cache import DynamicKVCache, KVCache, StaticKVCache
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding, apply_rotary
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.graphs import is_capturing
from edifice.outputs import model_output
from edifice_ssm.configs.hymba import HymbaConfig
from edifice_ssm.mamba import MambaMixer, MambaState

__all__ = ["Hymba", "HymbaAttention", "HymbaMixer", "HymbaMixerState", "HymbaSSMHeads", "HymbaState"]


@model_output
class HymbaMixerState:
    """Decoding state of one :class:`HymbaMixer`: the attention heads' KV cache and the Mamba heads' state."""

    attn: KVCache | None
    """Keys ``[B, Hk, L, d_k]`` and values ``[B, Hk, L, d_inner / n_heads]`` so far; None where the layer reuses
    its group producer's (cross-layer KV sharing)."""
    ssm: MambaState
    """The Mamba heads' convolution inputs and ``[B, d_inner, N]`` SSM state (constant size)."""


@model_output
@dataclasses.dataclass
class HymbaState(SequenceState):
    """A :class:`~edifice.blocks.backbone.SequenceState` that knows whether the meta tokens still have to run."""

    meta_pending: bool = True
    """True until the first ``step`` (the prefill) has run the meta tokens through every layer."""


#: What a producer layer hands its group: rotated keys ``[B, Hk, L, d_k]``, values ``[B, Hk, L, d_v]``, their
#: positions ``[L]`` or ``[B, L]`` and validity ``[B, L]`` (or None).
SharedKV = tuple[Tensor, Tensor, Tensor, Tensor | None]


class HymbaAttention(nn.Module):
    """Hymba's attention heads: ``x [B, T, d_model] -> [B, T, n_heads * v_head_dim]``, causal, without ``o_proj``.

    Queries and keys have ``head_dim`` features (RoPE), values ``v_head_dim``; ``n_kv_heads`` key/value heads are
    shared by the query heads (GQA). With ``window`` set, a query sees the last ``window`` positions and every key
    at a position below ``n_meta`` (the meta tokens). With ``reuse_kv`` the module has no key/value projections: it
    attends to the keys and values another layer passes in (cross-layer KV sharing).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        head_dim: int,
        v_head_dim: int,
        n_kv_heads: int | None = None,
        window: int | None = None,
        n_meta: int = 0,
        rope_base: float = 10000.0,
        reuse_kv: bool = False,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if min(d_model, n_heads, n_kv_heads, head_dim, v_head_dim) <= 0 or n_heads % n_kv_heads:
            raise ValueError(
                f"HymbaAttention: sizes must be > 0 and n_kv_heads={n_kv_heads} must divide n_heads={n_heads}"
            )
        if window is not None and window <= 0:
            raise ValueError(f"HymbaAttention: window must be > 0 or None, got {window}")
        self.n_heads, self.n_kv_heads, self.head_dim, self.v_head_dim = n_heads, n_kv_heads, head_dim, v_head_dim
        self.window, self.n_meta, self.reuse_kv = window, n_meta, reuse_kv
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        # A consumer of shared keys and values builds no projections for them (the released kv_weight_reuse=False).
        self.k_proj = None if reuse_kv else nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = None if reuse_kv else nn.Linear(d_model, n_kv_heads * v_head_dim, bias=False)
        self.rope = RotaryEmbedding(head_dim, base=rope_base)

    def reset_parameters(self) -> None:
        """PyTorch's default ``nn.Linear`` initialisation (as the released code)."""
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            if proj is not None:
                proj.reset_parameters()

    def _heads(self, proj: nn.Linear, x: Tensor, heads: int, size: int) -> Tensor:
        B, T, _ = x.shape
        return proj(x).view(B, T, heads, size).transpose(1, 2)  # type: ignore[no-any-return]  # (B, heads, T, size)

    def _allowed(self, q_pos: Tensor, k_pos: Tensor, k_valid: Tensor | None) -> Tensor | None:
        """Window-and-meta mask ``[B|1, 1, T, L]`` (causality is left to sdpa), and the keys' padding."""
        allowed: Tensor | None = None
        if self.window is not None:
            dist = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)  # (T, L) or (B, T, L)
            near = (dist < self.window) | (k_pos.unsqueeze(-2) < self.n_meta)  # meta tokens are always in view
            allowed = near[None, None] if near.dim() == 2 else near.unsqueeze(1)
        if k_valid is not None:
            padding = k_valid[:, None, None, :]  # (B, 1, 1, L)
            allowed = padding if allowed is None else allowed & padding
        return allowed

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
        shared: SharedKV | None = None,
    ) -> tuple[Tensor, SharedKV]:
        """Attend ``x`` to itself (and the cache), or to ``shared`` keys; returns the output and the keys it saw.

        ``positions [T]`` or ``[B, T]`` are absolute (default ``0..T-1``); a ``reuse_kv`` module needs ``shared``
        (its group producer's keys and values at the same positions) and takes no ``state``.
        """
        B, T, _ = x.shape
        if state is not None and positions is None:
            raise ValueError("HymbaAttention: positions are required with a KV cache state (the absolute index of x)")
        if self.reuse_kv != (shared is not None):
            need = "needs the keys and values of its group's producer" if self.reuse_kv else "computes its own keys"
            raise ValueError(f"HymbaAttention: this layer {need} (shared=...) ")
        q = self._heads(self.q_proj, x, self.n_heads, self.head_dim)  # (B, Hq, T, d_k)
        q_pos = torch.arange(T, device=x.device) if positions is None else positions
        cos, sin = self.rope(q_pos)
        q = apply_rotary(q, cos, sin)
        if shared is not None:  # cross-layer KV sharing: the producer's rotated keys, its cache in decoding
            k, v, k_pos, k_valid = shared
        else:
            assert self.k_proj is not None and self.v_proj is not None
            k = apply_rotary(self._heads(self.k_proj, x, self.n_kv_heads, self.head_dim), cos, sin)  # (B, Hk, T, d_k)
            v = self._heads(self.v_proj, x, self.n_kv_heads, self.v_head_dim)  # (B, Hk, T, d_v)
            if state is None:
                k_pos, k_valid = q_pos, mask
            else:
                state.update(k, v, q_pos, mask)
                k, v, k_pos, k_valid = state.keys, state.values, state.positions, state.valid  # (B, Hk, L, .), (B, L)
        out = ops.sdpa(
            q,
            k,
            v,
            causal=True,
            attn_mask=self._allowed(q_pos, k_pos, k_valid),
            q_positions=q_pos,
            k_positions=k_pos,
        )  # (B, Hq, T, d_v)
        return out.transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim), (k, v, k_pos, k_valid)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache | None:
        """An empty KV cache (static with ``max_len`` slots, else dynamic); None with ``reuse_kv``."""
        if self.reuse_kv:
            return None
        weight = self.q_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        sizes = (batch_size, self.n_kv_heads, self.head_dim)
        if max_len is None:
            return DynamicKVCache.empty(*sizes, v_head_dim=self.v_head_dim, device=device, dtype=dtype)
        return StaticKVCache.empty(*sizes, max_len, v_head_dim=self.v_head_dim, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        window = "global" if self.window is None else f"window={self.window}"
        reuse = ", reuses keys" if self.reuse_kv else ""
        return f"heads={self.n_heads}/{self.n_kv_heads}, d_k={self.head_dim}, d_v={self.v_head_dim}, {window}{reuse}"


class _NoProjection(nn.Identity):
    """Stands in for a mixer's output projection that the enclosing module applies itself."""

    bias = None  # read by MambaMixer.reset_parameters, which zeroes its projections' biases

    def reset_parameters(self) -> None:
        """Nothing to initialise."""


class HymbaSSMHeads(MambaMixer):
    """Hymba's SSM heads: :class:`~edifice_ssm.mamba.MambaMixer` without ``out_proj``, ``[B, T, d] -> [B, T, E]``.

    Everything else -- input projection to ``x`` and the gate ``G``, causal convolution, selective scan, ``D`` skip,
    SiLU gating, masking and the decoding state -- is Mamba's; the hybrid module projects after the average.
    """

    def __init__(self, d_model: int, **kwargs: Any) -> None:
        super().__init__(d_model, **kwargs)
        self.out_proj = _NoProjection()  # type: ignore[assignment]


class HymbaMixer(nn.Module):
    """Hymba's hybrid-head module ``[B, T, d_model] -> [B, T, d_model]``: parallel attention and SSM heads, each
    RMS-normalised and rescaled (``attn_norm.weight`` is ``β_1``, ``ssm_norm.weight`` is ``β_2``), averaged, then
    ``out_proj`` (``W_out``). Follows the sequence-mixer protocol."""

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int,
        head_dim: int,
        n_kv_heads: int | None = None,
        expand: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        dt_rank: int | None = None,
        window: int | None = None,
        n_meta: int = 0,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-6,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        kv_group: int | None = None,
        reuse_kv: bool = False,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if d_inner % n_heads:
            raise ValueError(f"HymbaMixer: n_heads={n_heads} must divide d_inner={d_inner} (the value heads)")
        if reuse_kv and kv_group is None:
            raise ValueError("HymbaMixer: reuse_kv needs the kv_group whose producer's keys this layer reads")
        self.d_model, self.d_inner, self.kv_group = d_model, d_inner, kv_group
        self.attn = HymbaAttention(
            d_model,
            n_heads,
            head_dim=head_dim,
            v_head_dim=d_inner // n_heads,
            n_kv_heads=n_kv_heads,
            window=window,
            n_meta=n_meta,
            rope_base=rope_base,
            reuse_kv=reuse_kv,
        )
        self.ssm = HymbaSSMHeads(
            d_model, d_state=d_state, expand=expand, d_conv=d_conv, dt_rank=dt_rank, dt_min=dt_min, dt_max=dt_max
        )
        self.attn_norm = get_norm("rmsnorm", d_inner, eps=norm_eps)  # gain = β_1
        self.ssm_norm = get_norm("rmsnorm", d_inner, eps=norm_eps)  # gain = β_2
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def reset_parameters(self) -> None:
        """Each branch's own initialisation (Mamba's for the SSM heads), unit gains ``β``, default ``W_out``."""
        for module in (self.attn, self.ssm, self.attn_norm, self.ssm_norm, self.out_proj):
            module.reset_parameters()  # type: ignore[operator]

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: HymbaMixerState | None = None,
        shared_kv: dict[int, SharedKV] | None = None,
    ) -> Tensor:
        """``Y = W_out (β_1 norm(M_att x) + β_2 norm(M_ssm x)) / 2``; ``state`` (both branches') updated in place.

        ``shared_kv`` maps a KV-sharing group to its producer's keys: a producer (``kv_group`` set, no ``reuse_kv``)
        writes its entry, a consumer reads it; the model passes one fresh dict through its layers per call.
        """
        shared = None
        if self.attn.reuse_kv:
            if shared_kv is None or self.kv_group not in shared_kv:
                raise ValueError(f"HymbaMixer: KV group {self.kv_group}'s producer must run first (shared_kv)")
            shared = shared_kv[self.kv_group]
        attn, seen = self.attn(
            x, mask=mask, positions=positions, state=None if state is None else state.attn, shared=shared
        )  # (B, T, E)
        if self.kv_group is not None and shared is None and shared_kv is not None:
            shared_kv[self.kv_group] = seen  # the producer hands its rotated keys (its cache, decoding) to the group
        ssm = self.ssm(x, mask=mask, state=None if state is None else state.ssm)  # (B, T, E)
        return self.out_proj((self.attn_norm(attn) + self.ssm_norm(ssm)) / 2)  # type: ignore[no-any-return]

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HymbaMixerState:
        """The KV cache (static when ``max_len`` is given) and the Mamba heads' zero state."""
        return HymbaMixerState(
            attn=self.attn.init_state(batch_size, max_len=max_len, device=device, dtype=dtype),
            ssm=self.ssm.init_state(batch_size, device=device, dtype=dtype),
        )


class Hymba(SequenceBackbone):
    """Hymba: meta tokens, then ``n_layers`` blocks of a :class:`HymbaMixer` and a SwiGLU MLP, and a final RMSNorm."""

    config_class: ClassVar[type[ArchConfig]] = HymbaConfig
    config: HymbaConfig

    def __init__(self, config: HymbaConfig) -> None:
        super().__init__(config)
        self.meta_tokens = nn.Parameter(torch.empty(config.n_meta_tokens, config.d_model))
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """``h + HymbaMixer(RMSNorm(h))`` then ``h + SwiGLU(RMSNorm(h))``; local attention unless a global layer."""
        c = self.config
        mixer = HymbaMixer(
            c.d_model,
            n_heads=c.n_heads,
            head_dim=c.qk_head_dim,
            n_kv_heads=c.n_kv_heads,
            expand=c.expand,
            d_state=c.d_state,
            d_conv=c.d_conv,
            dt_rank=c.time_step_rank,
            window=c.layer_window(index),
            n_meta=c.n_meta_tokens,
            rope_base=c.rope_base,
            norm_eps=c.norm_eps,
            dt_min=c.dt_min,
            dt_max=c.dt_max,
            kv_group=next((g for g, group in enumerate(c.kv_groups) if index in group), None),
            reuse_kv=any(index in group[1:] for group in c.kv_groups),
        )
        ffn = GatedFeedForward(c.d_model, c.ffn_dim, dropout=c.dropout) if c.ffn_dim else None
        return TransformerBlock(c.d_model, mixer, ffn, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each layer's own init (Mamba's for the SSM heads), meta tokens N(0, 1), embeddings N(0, init_std^2)."""
        super().reset_parameters()  # every submodule's default, in module order (children after their parents) ...
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.mixer, HymbaMixer)
            layer.mixer.reset_parameters()  # ... so the mixers re-apply theirs (the Mamba heads' Δ projection)
        nn.init.normal_(self.meta_tokens)
        if self.embed_tokens is not None:
            nn.init.normal_(self.embed_tokens.weight, std=self.config.init_std)

    # -- the stack with meta tokens -------------------------------------------------------------------------------
    def _stack(
        self, h: Tensor, attention_mask: Tensor | None, state: SequenceState | None
    ) -> tuple[Tensor, Tensor | None]:
        """Run the layers on ``h [B, T, d]``, with the meta tokens prepended unless ``state`` has run them already.

        Returns the hidden states of the ``T`` positions (before the final norm) and the summed auxiliary loss.
        """
        batch, T, d = h.shape
        pending = state is None or (isinstance(state, HymbaState) and state.meta_pending)
        M = self.config.n_meta_tokens if pending else 0
        mask, order = attention_mask, None
        if M:
            h = torch.cat([self.meta_tokens.to(h.dtype).expand(batch, M, d), h], dim=1)  # (B, M + T, d): [R, X]
            if attention_mask is not None:
                mask = torch.cat([attention_mask.new_ones(batch, M), attention_mask], dim=1)
                # Leading pads go in front of the meta tokens (stable sort on "is a leading pad"), and back after.
                leading = attention_mask.to(torch.long).cumsum(dim=-1) == 0  # (B, T)
                rank = torch.cat([leading.new_ones(batch, M), ~leading], dim=1).to(torch.int8)  # 0: leading pad
                order = torch.argsort(rank, dim=1, stable=True)  # (B, M + T)
                h = h.gather(1, order.unsqueeze(-1).expand_as(h))
                mask = mask.gather(1, order)
        start = None if state is None else state.position[:, None]  # (B, 1)
        if mask is None:
            offsets = torch.arange(M + T, device=h.device)
            positions = None if start is None else start + offsets  # (B, M + T) when decoding
            advance: Tensor | int = M + T
        else:
            offsets = mask.to(torch.long).cumsum(dim=-1) - 1  # index among the valid positions (-1 before the first)
            positions = offsets if start is None else start + offsets
            advance = mask.sum(dim=-1)
        aux: Tensor | None = None
        layer_states: list[Any] = [None] * len(self.layers) if state is None else state.layers
        shared: dict[int, Any] = {}  # each KV-sharing group's producer keys, for its consumers (§2.3)
        for layer, layer_state in zip(self.layers, layer_states, strict=True):
            if state is None and self.grad_checkpointing and self.training and torch.is_grad_enabled():
                out = checkpoint(layer, h, mask=mask, positions=positions, shared_kv=shared, use_reentrant=False)
            else:
                out = layer(h, mask=mask, positions=positions, state=layer_state, shared_kv=shared)
            h, layer_aux = out if isinstance(out, tuple) else (out, None)
            if layer_aux is not None:
                aux = layer_aux if aux is None else aux + layer_aux
        if state is not None:
            state.position.add_(advance)
            if isinstance(state, HymbaState):
                state.meta_pending = False
        if order is not None:
            h = h.gather(1, torch.argsort(order, dim=1).unsqueeze(-1).expand_as(h))
        return h[:, M:], aux

    def forward(
        self, x: Tensor | None = None, input_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor | SequenceOutput:
        """Run the model on ``x [B, T, d_in]`` or ``input_ids [B, T]`` (meta tokens prepended internally)."""
        self.check_inputs(x=x, input_ids=input_ids, attention_mask=attention_mask)
        inputs = input_ids if self.embed_tokens is not None else x
        assert inputs is not None
        h, aux = self._stack(self.embed_dropout(self.embed_inputs(inputs)), attention_mask, None)
        return self._output(self.pool(self.norm(h), attention_mask), aux)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HymbaState:
        """An empty state with the meta tokens pending; ``max_len`` counts tokens (the meta slots are added)."""
        M = self.config.n_meta_tokens
        base = super().init_state(
            batch_size, max_len=None if max_len is None else max_len + M, device=device, dtype=dtype
        )
        return HymbaState(layers=base.layers, position=base.position, meta_pending=M > 0)

    def step(
        self, x: Tensor, state: SequenceState, *, attention_mask: Tensor | None = None
    ) -> tuple[Tensor | SequenceOutput, SequenceState]:
        """Advance by ``t >= 1`` positions; the first call (the prefill) runs the meta tokens first."""
        if not is_capturing():
            self.check_inputs(**{self.primary_input: x, "attention_mask": attention_mask})
        h, aux = self._stack(self.embed_dropout(self.embed_inputs(x)), attention_mask, state)
        return self._output(self.norm(h), aux), state
