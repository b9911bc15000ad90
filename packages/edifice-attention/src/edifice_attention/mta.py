"""Multi-Token Attention (MTA): attention weights conditioned on several queries, keys and heads.

Golovneva, Wang, Weston & Sukhbaatar (2025), "Multi-Token Attention", arXiv:2504.00927 (FAIR at Meta). Implemented,
per layer of the ``decoder_only`` stack (causal, RoPE, grouped KV heads, KV cache):

* §3.1, key-query convolution, pre-softmax, with the paper's simplified masking (eq. 2)
  ``A = Softmax(Mask_-∞(Conv2d_θ(Mask_0(q kᵀ / √d))))``: one ``c_q × c_k`` kernel per head, causal over queries,
  centred over keys, in layers ``l = kq_conv_every, 2·kq_conv_every, …``;
* §3.2, head-mixing convolution, post-softmax: groups of ``c_h`` consecutive heads, ``A'^h = Σ_{h'} w_{h h'} A^{h'}``
  within the group, in layers ``l = head_conv_every, …``;
  both through :func:`edifice.ops.multi_token_attention` (scores with a convolution cannot go through SDPA);
* §3.3, group normalisation with depth scaling: each head's output is normalised alone (RMSNorm over the head's
  channels, one gain shared by the heads, as the Differential Transformer's code the paper follows) and scaled by
  ``1 - λ_init(l)``, ``λ_init(l) = 0.8 - 0.6 exp(-0.3 (l - 1))``, in every layer.

Decoding: the query convolution at position ``t`` needs the scores of the queries ``t - c_q + 1 .. t``, so the state
of a layer with the key-query convolution is its KV cache plus its last ``c_q - 1`` (rotated) queries and their
positions (:class:`MTAState`, ``-1`` marks a missing or padded query); a step convolves those rows with the new ones
against the whole cache and keeps the new rows. Padded positions (queries and keys) are zeroed before the
convolution, which is what the zero border of the unpadded sequence gives, so padding is exact.

Deviations and choices (see ``docs/design/mta.md``): kernels start at the identity (``kernel_init='identity'``, the
model is then plain softmax attention) or from N(0, 0.02²)+identity ('normal'); the paper does not fix which layers
"every 4th" means (here 1-based ``l % every == 0``). No sliding window (the key convolution runs over cache slots in
position order) and no soft-capping. The pre-softmax head mix and post-softmax key-query variants of the paper's
ablations are not offered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.kv_cache import KVCache
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice_attention._attention_variants import VariantAttention
from edifice_attention.configs.mta import MtaConfig
from edifice_attention.decoder_only import DecoderOnly
from edifice_attention.diff_transformer import lambda_init_for_layer

__all__ = ["MTAAttention", "MTAState", "Mta"]


@dataclasses.dataclass
class MTAState:
    """A layer's decoding state: its KV cache and its last ``c_q - 1`` queries ``[B, H, c_q - 1, D]`` with positions."""

    kv: KVCache
    queries: Tensor
    query_positions: Tensor  # (B, c_q - 1) int64; -1: no query (before the start, or padding)


class MTAAttention(VariantAttention):
    """Causal multi-head attention with a key-query convolution, head mixing and per-head norm (see module doc)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        c_q: int | None,
        c_k: int,
        c_h: int | None,
        lambda_init: float,
        kernel_init: str = "identity",
        head_norm_eps: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(d_model, n_heads, **kwargs)
        self.c_q = c_q or 1
        self.kernel_init = kernel_init
        self.lambda_init = lambda_init
        H = self.n_heads
        self.kq_weight = nn.Parameter(torch.zeros(H, c_q, c_k)) if c_q else None
        self.head_weight = nn.Parameter(torch.zeros(H // c_h, c_h, c_h)) if c_h else None
        self.head_norm = get_norm("rmsnorm", self.head_dim, eps=head_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear defaults, unit head-norm gain and identity kernels (plus N(0, 0.02²) for 'normal')."""
        super().reset_parameters()
        if not hasattr(self, "head_norm"):
            return
        self.head_norm.reset_parameters()  # type: ignore[operator]
        with torch.no_grad():
            for weight in (self.kq_weight, self.head_weight):
                if weight is None:
                    continue
                weight.zero_()
                if self.kernel_init == "normal":
                    weight.normal_(0.0, 0.02)
            if self.kq_weight is not None:
                c_q, c_k = self.kq_weight.shape[1:]
                self.kq_weight[:, c_q - 1, (c_k + 1) // 2 - 1] += 1.0
            if self.head_weight is not None:
                self.head_weight.add_(torch.eye(self.head_weight.shape[1], device=self.head_weight.device))

    def init_state(  # type: ignore[override]  # a KV cache, or one wrapped with the query history
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MTAState | KVCache:
        """The KV cache, with the last ``c_q - 1`` queries when the layer convolves over queries."""
        kv = super().init_state(batch_size, max_len=max_len, device=device, dtype=dtype)
        if self.kq_weight is None or self.c_q == 1:
            return kv
        rows = self.c_q - 1
        queries = kv.keys.new_zeros(batch_size, self.n_heads, rows, self.head_dim)
        return MTAState(kv, queries, torch.full((batch_size, rows), -1, dtype=torch.long, device=kv.keys.device))

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MTAState | KVCache | None = None,
    ) -> Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``; with ``state``, appends to the cache (and the query history)."""
        kv = state.kv if isinstance(state, MTAState) else state
        q, k, v = self._qkv(x, mask=mask, positions=positions, state=kv)
        k, v, masking = self._fetch(k, v, mask=mask, positions=positions, state=kv)
        B, _, T, _ = q.shape
        if self.kq_weight is None and self.head_weight is None:
            out = self.attend(q, k, v, **masking)
        else:
            q_pos = torch.arange(T, device=x.device).expand(B, T) if positions is None else positions.expand(B, T)
            if mask is not None:
                q_pos = q_pos.masked_fill(~mask, -1)  # padded queries read nothing and are zeroed before the conv
            k_pos, key_mask = masking.get("k_positions"), masking.get("attn_mask")
            if k_pos is None:
                k_pos = torch.arange(k.shape[2], device=x.device)
            if isinstance(state, MTAState):  # the last c_q - 1 queries come first: the convolution reads their rows
                rows = state.queries.shape[2]
                q_all = torch.cat([state.queries.to(q.dtype), q], dim=2)
                qp_all = torch.cat([state.query_positions, q_pos], dim=1)
                state.queries.copy_(q_all[:, :, -rows:])
                state.query_positions.copy_(qp_all[:, -rows:])
            else:
                q_all, qp_all = q, q_pos
            query_valid = (qp_all >= 0)[:, None, :, None]  # (B, 1, Tq, 1)
            attn_mask = query_valid if key_mask is None else query_valid & key_mask
            out = ops.multi_token_attention(
                q_all,
                k,
                v,
                self.kq_weight,
                self.head_weight,
                scale=self.scale,
                q_positions=qp_all,
                k_positions=k_pos,
                attn_mask=attn_mask,
            )[:, :, -T:]
        out = self.head_norm(out) * (1.0 - self.lambda_init)  # §3.3: per-head norm, depth scaling
        return self.finish(out, x)

    def extra_repr(self) -> str:
        kq = f", kq_kernel={tuple(self.kq_weight.shape[1:])}" if self.kq_weight is not None else ""
        hm = f", c_h={self.head_weight.shape[1]}" if self.head_weight is not None else ""
        return f"{super().extra_repr()}{kq}{hm}, lambda_init={self.lambda_init:.4g}"


class Mta(DecoderOnly):
    """The ``decoder_only`` stack with :class:`MTAAttention` mixers (see module doc)."""

    config_class: ClassVar[type[ArchConfig]] = MtaConfig
    config: MtaConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s attention: the convolutions of the layers the config names, depth-scaled head norm."""
        c = self.config
        kwargs = self.attention_kwargs()
        layer = index + 1
        return MTAAttention(
            kwargs.pop("d_model"),
            kwargs.pop("n_heads"),
            c_q=c.c_q if layer % c.kq_conv_every == 0 else None,
            c_k=c.c_k,
            c_h=c.c_h if layer % c.head_conv_every == 0 else None,
            lambda_init=lambda_init_for_layer(index),
            kernel_init=c.kernel_init,
            head_norm_eps=c.head_norm_eps,
            **kwargs,
        )
