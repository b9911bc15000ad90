"""Samba: Mamba and sliding-window attention interleaved layer by layer, each followed by an MLP.

A Samba block (§2, Methodology) is ``Mamba -> MLP -> SWA -> MLP``: the Mamba layer compresses the whole past into a
recurrent state, the sliding-window attention (SWA) layer retrieves precisely from the last ``window`` tokens (2048
in the paper), and the SwiGLU MLPs store knowledge. Every layer is pre-norm residual with RMSNorm. Attention uses
RoPE and is causal within its window, so both mixers have constant-size decoding state: Mamba's conv and SSM state,
and a ring buffer of the last ``window`` keys and values (:class:`edifice.blocks.kv_cache.SlidingWindowKVCache`).
That is what lets Samba run on sequences longer than it was trained on at constant memory.

Paper: Liliang Ren, Yang Liu, Yadong Lu, Yelong Shen, Chen Liang and Weizhu Chen, "Samba: Simple Hybrid State Space
Models for Efficient Unlimited Context Language Modeling", ICLR 2025, https://arxiv.org/abs/2406.07522.

Equations (§2; the Mamba layer is Gu & Dao 2023's, whose equation numbers are given)::

    h = x + Mixer(RMSNorm(x));   y = h + SwiGLU(RMSNorm(h))            every layer (pre-norm)
    Mixer_{2j}   = Mamba:  (x, z) = in_proj(u);  x = SiLU(conv(x));  (δ, B, C) = x_proj(x);  Δ = softplus(dt_proj(δ))
                   h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t;  y_t = C_t h_t + D x_t      (eqs. 2a-2b, 4)
                   out = out_proj(y ⊙ SiLU(z))
    Mixer_{2j+1} = SWA:    o_t = Σ_{t-w < s <= t} softmax_s(q_t·k_s / sqrt(d)) v_s,  q, k rotated by RoPE
    SwiGLU(x) = down(SiLU(gate(x)) ⊙ up(x)),  hidden width d_ff = 8/3 · d_model (the released configs)

Initialisation (the released code's ``mamba_init``): Mamba mixers use Mamba's (S4D-real A, log-uniform Δ, D = 1),
other projections PyTorch's default, and the three output projections of each layer (Mamba ``out_proj``,
attention ``o_proj``, MLP ``down_proj``) are divided by ``sqrt(2 * n_layers)``; embeddings N(0, init_std = 0.02).

Deviation: none in the mathematics. The reference code fixes which layers are Mamba (even indices) as here.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice_ssm.configs.samba import SambaConfig
from edifice_ssm.mamba import MambaMixer, reset_ends

__all__ = ["Samba", "SlidingWindowAttention"]


class SlidingWindowAttention(Attention):
    """Causal attention over the last ``window`` positions with RoPE; its decoding state is a constant-size ring."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        window: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        rope_theta: float = 10000.0,
    ) -> None:
        head_dim = head_dim if head_dim is not None else d_model // n_heads
        super().__init__(
            d_model,
            n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            causal=True,
            window=window,
            rope=RotaryEmbedding(head_dim, base=rope_theta),
            ring_cache=True,
        )


class Samba(SequenceBackbone):
    """Samba: even layers Mamba + SwiGLU, odd layers sliding-window attention + SwiGLU, all pre-norm RMSNorm."""

    config_class: ClassVar[type[ArchConfig]] = SambaConfig
    config: SambaConfig

    def __init__(self, config: SambaConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index``: ``h + Mixer(RMSNorm(h))`` then ``h + SwiGLU(RMSNorm(h))``, Mixer by parity of ``index``."""
        c = self.config
        mixer: nn.Module
        if c.is_attention(index):
            mixer = SlidingWindowAttention(
                c.d_model,
                c.n_heads,
                window=c.window,
                n_kv_heads=c.n_kv_heads,
                head_dim=c.attn_head_dim,
                rope_theta=c.rope_theta,
            )
        else:
            mixer = MambaMixer.from_config(c)
        ffn = GatedFeedForward(c.d_model, c.ffn_dim, activation="silu")
        return TransformerBlock(c.d_model, mixer, ffn, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each layer's own init, output projections divided by ``sqrt(2 n_layers)``, embeddings N(0, init_std)."""
        scale = math.sqrt(2 * self.config.n_layers)  # two residual branches (mixer, MLP) per layer
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.ffn, GatedFeedForward)
            layer.reset_parameters()
            mixer = layer.mixer
            out = mixer.out_proj if isinstance(mixer, MambaMixer) else mixer.o_proj  # Mamba's or attention's
            assert isinstance(out, nn.Linear)
            out.weight.div_(scale)
            layer.ffn.down_proj.weight.div_(scale)
        reset_ends(self)
