"""Lightning attention: linear attention with a fixed decay per head, scheduled by depth (MiniMax-01's layer).

Papers: Qin, Sun, Li, Shen, Sun & Zhong (2024), "Lightning Attention-2: A Free Lunch for Handling Unlimited Sequence
Lengths in Large Language Models", https://arxiv.org/abs/2401.04658 (the tiled algorithm; the layer is
TransNormerLLM's, Qin et al. 2023, https://arxiv.org/abs/2307.14995); MiniMax (2025), "MiniMax-01: Scaling
Foundation Models with Lightning Attention", https://arxiv.org/abs/2501.08313 (the layer as released).

Implemented (per head, state ``KV ∈ R^{d×d}``; the layer in :mod:`edifice_attention._linear_attention`):

* Lightning Attention-2, Algorithm 1 / eq. 4: ``kv_t = λ kv_{t-1} + k_tᵀ v_t``, ``o_t = q_t kv_t`` with no
  ``1/sqrt(d)`` scale; the intra-block part ``[(Q Kᵀ) ⊙ M] V`` with ``M_ts = λ^{t-s}`` (``t >= s``) and the
  inter-block part ``Λ Q KV`` are the chunked form of :func:`edifice.ops.linear_attention` (the training path); the
  recurrent form is the ``step`` path;
* MiniMax-01 §2.2.1 and its released code (``MiniMaxLightningAttention``): ``Q, K, V = SiLU(X W_qkv)``; the decay
  ``λ_h = exp(-s_h · (1 - l/(L-1) + 1e-5))`` with ALiBi's slopes ``s_h = 2^{-8(h+1)/H}`` (``h = 0..H-1``), so the
  first layer forgets fastest and the last almost not at all; ``O = (RMSNorm(Concat(head_h)) ⊙ σ(X W_G)) W_O``, one
  RMSNorm over all heads' channels.

Deviations: the blocks are the family's pre-norm RMSNorm blocks with a SwiGLU feed-forward (TransNormerLLM's layout,
which also uses SRMSNorm and SGLU); MiniMax-01's blocks scale the residuals (``α``, ``β``, 1 by default), take the
residual after the input norm, use a mixture of experts and put softmax attention every eighth layer, none of which
is this entry (it is the lightning-attention layer). The fused ``W_qkv`` is three projections here (``from_minimax``
in the tests maps it). flash-linear-attention's ``chunk_lightning_attn`` uses TransNormerLLM's schedule
``log λ_h = -8h/H · (1 - l/L)`` (head 0 without decay); this entry follows MiniMax-01's released slopes.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from edifice.config import ArchConfig
from edifice_attention._linear_attention import LinearAttentionBackbone, LinearAttentionMixer
from edifice_attention.configs.lightning_attention import LightningAttentionConfig

__all__ = ["LightningAttention", "LightningAttentionModel", "lightning_log_decays"]


def lightning_log_decays(n_heads: int, layer: int, n_layers: int, device: torch.device | str | None = None) -> Tensor:
    """``log λ_h = -2^{-8(h+1)/H} · (1 - l/(L-1+1e-5) + 1e-5)`` (MiniMax-01's slopes), fp32 ``[n_heads]``."""
    slopes = torch.exp2(-8.0 / n_heads * (torch.arange(n_heads, dtype=torch.float32, device=device) + 1))
    return -slopes * (1 - layer / (n_layers - 1 + 1e-5) + 1e-5)


class LightningAttention(LinearAttentionMixer):
    """MiniMax-01's lightning-attention mixer: SiLU q/k/v, the depth-scheduled decay, a sigmoid-gated joint RMSNorm."""

    scale = 1.0  # o_t = q_t kv_t, no 1/sqrt(d) (Algorithm 1; MiniMax-01's code)

    def __init__(self, config: LightningAttentionConfig, layer: int = 0) -> None:
        super().__init__(config)
        self.layer, self.n_layers = layer, config.n_layers

    def log_decay(self, x: Tensor) -> Tensor:
        """``log λ_h`` of this layer, broadcast over batch and time: ``[B, T, H]`` fp32."""
        B, T, _ = x.shape
        return lightning_log_decays(self.n_heads, self.layer, self.n_layers, x.device).expand(B, T, self.n_heads)

    def gates(
        self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, **inputs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The values get the activation too (``SiLU(X W_qkv)`` covers all three); q, k have it as feature map."""
        return q, k, F.silu(v) if self.feature_map is not None else v, self.log_decay(x)


class LightningAttentionModel(LinearAttentionBackbone):
    """Pre-norm blocks of lightning attention (each layer with its own decay schedule) and a SwiGLU feed-forward."""

    config_class: ClassVar[type[ArchConfig]] = LightningAttentionConfig
    config: LightningAttentionConfig
    mixer_class = LightningAttention

    def build_mixer(self, index: int) -> LightningAttention:
        """The mixer of layer ``index``, whose decays depend on its depth."""
        return LightningAttention(self.config, layer=index)
