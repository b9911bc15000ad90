"""State-space transformer: per layer, causal attention and a Mamba SSM run in parallel, mixed by a learned gate.

An Edifice-original hybrid (no paper; the catalogue's "parallel SSM + attention, gated"), specified in
``docs/design/ss_transformer.md`` before it was built. Each layer reads the normalised residual stream ``u`` with two
token mixers -- multi-head causal attention (RoPE, grouped-query, optional sliding window; core
:class:`~edifice.blocks.attention.Attention`) and the Mamba-1 selective-SSM mixer
(:class:`~edifice_ssm.mamba.MambaMixer`) -- and adds their convex combination under an input-dependent,
per-channel sigmoid gate to the residual stream, followed by a SwiGLU feed-forward sub-layer.

Equations (numbers of the design note)::

    u   = RMSNorm(h)
    a   = Attn(u)                          (1)  softmax(Q Kᵀ / sqrt(d) + causal mask) V W_O, RoPE on Q and K
    s   = SSM(u)                           (2)  Mamba: conv, then h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t, gate, W_out
    g   = σ(u W_g + b_g)                   (3)  per position and channel
    h'  = h + g ⊙ a + (1 - g) ⊙ s          (4)
    h'' = h' + SwiGLU(RMSNorm(h'))         (5)

It differs from ``hymba`` in the combination (an input-dependent convex gate instead of fixed scales after
normalising each branch), in keeping each branch's own output projection and in having no meta tokens.

References for the parts: Vaswani et al. (2017), "Attention Is All You Need", https://arxiv.org/abs/1706.03762;
Gu & Dao (2023), "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", https://arxiv.org/abs/2312.00752.

Decoding: a layer's state is the attention's KV cache and the Mamba mixer's convolution and SSM state; ``step``
reproduces ``forward``. Padding (``attention_mask``): exact for left and right padding (attention masks by absolute
position, the SSM skips padded positions with ``Δ = 0``).

Initialisation: ``W_g = 0``, ``b_g = 0`` (the gate starts at 1/2, a plain average); PyTorch's defaults for the
attention and FFN projections, Mamba's own for the SSM branch; the three residual branches' output projections scaled
by ``1/sqrt(2 n_layers)``; embeddings ``N(0, init_std^2)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.kv_cache import KVCache
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_ssm.configs.ss_transformer import SSTransformerConfig
from edifice_ssm.mamba import MambaMixer, MambaState

__all__ = ["GatedParallelMixer", "GatedParallelState", "SSTransformer"]


@model_output
class GatedParallelState:
    """Decoding state of one :class:`GatedParallelMixer`: the attention's KV cache and the SSM branch's state."""

    attn: KVCache
    """Keys and values of every position so far (static when ``max_len`` was given)."""
    ssm: MambaState
    """The Mamba branch's convolution inputs and SSM state (constant size)."""


class GatedParallelMixer(nn.Module):
    """``g ⊙ Attn(u) + (1 - g) ⊙ SSM(u)`` with ``g = σ(u W_g + b_g)`` (eqs. 1-4): ``[B, T, d] -> [B, T, d]``.

    Follows the sequence-mixer protocol (``mixer(u, *, mask, positions, state)``, ``init_state``).
    """

    def __init__(self, attn: Attention, ssm: MambaMixer) -> None:
        super().__init__()
        if attn.d_model != ssm.d_model:
            raise ValueError(f"GatedParallelMixer: attention width {attn.d_model} != SSM width {ssm.d_model}")
        self.d_model = attn.d_model
        self.attn = attn
        self.ssm = ssm
        self.gate = nn.Linear(self.d_model, self.d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each branch's own initialisation (Mamba's for the SSM) and a zero gate: ``g = 1/2`` everywhere."""
        self.attn.reset_parameters()
        self.ssm.reset_parameters()
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(
        self,
        u: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: GatedParallelState | None = None,
    ) -> Tensor:
        """Mix ``u [B, T, d]`` (already normalised); ``state`` (both branches') is continued and updated in place."""
        a = self.attn(u, mask=mask, positions=positions, state=None if state is None else state.attn)  # (1)
        s = self.ssm(u, mask=mask, state=None if state is None else state.ssm)  # (2)
        g = torch.sigmoid(self.gate(u))  # (3) (B, T, d)
        mixed: Tensor = g * a + (1.0 - g) * s  # (4) without the residual, which the enclosing block adds
        return mixed

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GatedParallelState:
        """The attention's KV cache and the SSM branch's zero state."""
        return GatedParallelState(
            attn=self.attn.init_state(batch_size, max_len=max_len, device=device, dtype=dtype),
            ssm=self.ssm.init_state(batch_size, device=device, dtype=dtype),
        )


class SSTransformer(SequenceBackbone):
    """``n_layers`` blocks of a :class:`GatedParallelMixer` (attention ∥ Mamba, gated) and a SwiGLU FFN; RMSNorm."""

    config_class: ClassVar[type[ArchConfig]] = SSTransformerConfig
    config: SSTransformerConfig

    def __init__(self, config: SSTransformerConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """``h + Dropout(GatedParallelMixer(RMSNorm(h)))`` then ``h + Dropout(SwiGLU(RMSNorm(h)))`` (eqs. 4-5)."""
        c = self.config
        head_dim = c.attention_head_dim
        attn = Attention(
            c.d_model,
            c.n_heads,
            n_kv_heads=c.n_kv_heads,
            head_dim=head_dim,
            causal=True,
            window=c.window,
            rope=RotaryEmbedding(head_dim, base=c.rope_base),
        )
        ssm = MambaMixer(c.d_model, d_state=c.d_state, expand=c.expand, d_conv=c.d_conv, dt_rank=c.time_step_rank)
        ffn = GatedFeedForward(c.d_model, c.ffn_dim, dropout=c.dropout) if c.ffn_dim else None
        mixer = GatedParallelMixer(attn, ssm)
        return TransformerBlock(c.d_model, mixer, ffn, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each sub-layer's own init, then the residual branches' output projections over ``sqrt(2 n_layers)``."""
        super().reset_parameters()  # every submodule's default, in module order (children after their parents) ...
        c = self.config
        if self.embed_tokens is not None:
            nn.init.normal_(self.embed_tokens.weight, std=c.init_std)
        scale = math.sqrt(2 * c.n_layers)
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.mixer, GatedParallelMixer)
            layer.mixer.reset_parameters()  # ... so the mixers re-apply theirs: Mamba's Δ projection, the zero gate
            layer.mixer.attn.o_proj.weight.div_(scale)
            layer.mixer.ssm.out_proj.weight.div_(scale)
            if isinstance(layer.ffn, GatedFeedForward):
                layer.ffn.down_proj.weight.div_(scale)
