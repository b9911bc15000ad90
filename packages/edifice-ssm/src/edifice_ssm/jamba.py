"""Jamba: a hybrid of Mamba and attention layers with mixture-of-experts MLPs and no positional encoding.

A Jamba block (§2, Fig. 1) stacks ``l`` pre-norm residual layers; each has a token mixer -- Mamba, or attention in
one layer out of ``attn_layer_period`` (``a : m = 1 : 7`` in the released model) -- and an MLP, which is a mixture
of experts in one layer out of ``expert_layer_period`` (``e = 2``, ``n = 16`` experts, top ``K = 2``). Mamba layers
carry RMSNorm on their inner activations Δ, B and C (§6.4), which the authors found necessary for stable training
at scale; attention uses grouped-query heads and, as Mamba already conveys order, no positional encoding (§6.5).

Paper: Opher Lieber, Barak Lenz, Hofit Bata, et al., "Jamba: A Hybrid Transformer-Mamba Language Model", 2024,
https://arxiv.org/abs/2403.19887.

Equations (the paper numbers none for the block; those of the Mamba layer are Gu & Dao 2023's)::

    h = x + Mixer(RMSNorm(x));   y = h + MLP(RMSNorm(h))                       pre-norm layer (Fig. 1b)
    Mixer = Attention (GQA, softmax(q kᵀ / sqrt(d)) v, causal, no RoPE)          every attn_layer_period-th layer
          | Mamba:  (x, z) = in_proj(u);  x = SiLU(conv(x));  (δ, B, C) = x_proj(x)
                    δ, B, C = RMSNorm(δ), RMSNorm(B), RMSNorm(C)                §6.4
                    Δ = softplus(dt_proj(δ));  h_t = exp(Δ A) h_{t-1} + Δ B x_t;  y = C h + D x     Mamba eqs. 2a-2b, 4
                    out = out_proj(y * SiLU(z))
    MLP = SwiGLU  |  MoE: p = softmax(W_r h), y = Σ_{e ∈ top2(p)} p_e SwiGLU_e(h)  every expert_layer_period-th layer

The router keeps the raw softmax weights of the top two experts (no renormalisation, as the released model); the
Switch load-balancing loss of every MoE layer, weighted by ``aux_loss_coef``, is returned as ``aux_loss``.

Initialisation: the paper gives none. Mamba layers use Mamba's (S4D-real A, log-uniform Δ, D = 1); attention, MLP,
expert and router weights and the embeddings are N(0, init_std = 0.02), the released model's initializer_range.

Deviations: none in the forward computation (checked against transformers' ``JambaForCausalLM``). Under
``torch.compile`` the experts run densely (same values). transformers' load-balancing loss pools the router
statistics of all layers before multiplying them; here each layer's loss is computed on its own and summed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.moe import MoEFeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice_ssm._hybrid_mamba import JambaMambaMixer
from edifice_ssm.configs.jamba import JambaConfig

__all__ = ["Jamba", "JambaMambaMixer"]


class Jamba(SequenceBackbone):
    """Jamba: pre-norm layers of Mamba or attention mixers, each followed by a SwiGLU MLP or a top-k MoE."""

    config_class: ClassVar[type[ArchConfig]] = JambaConfig
    config: JambaConfig

    def __init__(self, config: JambaConfig) -> None:
        super().__init__(config)
        self.returns_aux_loss = any(config.is_moe(i) for i in range(config.n_layers))
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index``: ``h + Mixer(RMSNorm(h))`` then ``h + MLP(RMSNorm(h))`` with the paper's schedule."""
        c = self.config
        mixer: nn.Module
        if c.is_attention(index):
            mixer = Attention(c.d_model, c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, causal=True)
        else:
            mixer = JambaMambaMixer(
                c.d_model,
                norm_eps=c.norm_eps,
                d_state=c.d_state,
                expand=c.expand,
                d_conv=c.d_conv,
                dt_rank=c.time_step_rank,
                conv_bias=c.conv_bias,
                bias=c.bias,
                dt_min=c.dt_min,
                dt_max=c.dt_max,
                dt_init_floor=c.dt_init_floor,
                dt_scale=c.dt_scale,
                dt_init=c.dt_init,
                scan=c.scan,
            )
        ffn: nn.Module
        if c.is_moe(index):
            ffn = MoEFeedForward(
                c.d_model,
                c.ffn_dim,
                c.n_experts,
                c.top_k,
                activation=c.activation,
                norm_topk_prob=c.norm_topk_prob,
                aux_loss_coef=c.aux_loss_coef,
            )
        else:
            ffn = GatedFeedForward(c.d_model, c.ffn_dim, activation=c.activation)
        return TransformerBlock(c.d_model, mixer, ffn, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's init in Mamba layers; N(0, init_std) for attention, MLP, expert, router, embedding, head weights."""
        std = self.config.init_std
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock)
            layer.reset_parameters()
            normal = [layer.ffn] if isinstance(layer.mixer, JambaMambaMixer) else [layer.mixer, layer.ffn]
            for module in normal:
                for sub in module.modules():  # type: ignore[union-attr]
                    if isinstance(sub, nn.Linear):
                        nn.init.normal_(sub.weight, std=std)
                        if sub.bias is not None:
                            nn.init.zeros_(sub.bias)
        self.norm.reset_parameters()  # type: ignore[operator]
        if self.embed_tokens is not None:
            nn.init.normal_(self.embed_tokens.weight, std=std)
        if isinstance(self.input_proj, nn.Linear):
            self.input_proj.reset_parameters()
        if self.lm_head is not None and not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=std)
