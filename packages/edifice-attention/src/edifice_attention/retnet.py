"""RetNet: multi-scale retention, linear attention whose state decays by a fixed factor γ per head.

Paper: Sun et al. (2023), "Retentive Network: A Successor to Transformer for Large Language Models",
https://arxiv.org/abs/2307.08621.

Implemented (per head, state ``S ∈ R^{d_k×d_v}``; the layer in :mod:`edifice_attention._linear_attention`):

* eqs. 1-3: ``Q = (X W_Q) ⊙ Θ``, ``K = (X W_K) ⊙ Θ̄`` with ``Θ_n = e^{inθ}``, the rotation of RoPE (rotate-half
  pairing, ``θ_i = base^{-2i/d_k}``; the positions are those of the backbone, so padding and decoding keep them);
* eq. 6, recurrent form: ``S_n = γ S_{n-1} + K_nᵀ V_n``, ``Retention(X_n) = Q_n S_n`` (the ``step`` path);
* eq. 5, parallel form ``(Q Kᵀ ⊙ D) V`` with ``D_nm = γ^{n-m}`` and eq. 7, the chunkwise form (the training path):
  both are :func:`edifice.ops.linear_attention` with the constant log-decay ``log γ``;
* eq. 8, multi-scale retention: ``γ = 1 - 2^{-5 - arange(0, h)}`` per head, ``Y = GroupNorm_h(Concat(head_i))``
  (a LayerNorm over each head's ``d_v`` channels), ``MSR(X) = (swish(X W_G) ⊙ Y) W_O``; queries scaled by
  ``1/sqrt(d_k)`` (§2.2);
* eq. 9, the block: ``Y = MSR(LN(X)) + X``, ``X' = FFN(LN(Y)) + Y`` with a GELU FFN of width ``2d`` and value heads
  ``2d`` wide (§3.1), initialised as the authors' torchscale code (xavier-uniform, gain ``2^{-2.5}`` on ``W_Q, W_K,
  W_V, W_G`` and 1 on ``W_O``).

Deviations: the score normalisations of §2.2 beyond ``1/sqrt(d_k)`` (dividing ``D`` by its row sums and the scores
by ``max(|Σ R|, 1)``) are omitted: GroupNorm is invariant to a positive scale of each head's output, so they change
the result only through the norm's epsilon (flash-linear-attention omits them too). The GroupNorm has a learnable
gain and bias (torchscale's has none; flash-linear-attention's RMSNorm has a gain). ``output_norm="rmsnorm"``,
``norm="rmsnorm"`` and ``ffn="swiglu"`` give flash-linear-attention's RetNet, which :func:`from_fla` converts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.rope import RotaryEmbedding, apply_rotary
from edifice.config import ArchConfig
from edifice_attention._linear_attention import (
    LinearAttentionBackbone,
    LinearAttentionMixer,
    fla_config_fields,
    fla_source,
    load_fla,
    map_fla_state_dict,
)
from edifice_attention.configs.retnet import RetNetConfig

__all__ = ["MultiScaleRetention", "RetNet", "from_fla", "retention_decays"]


def retention_decays(n_heads: int, device: torch.device | str | None = None) -> Tensor:
    """``log γ_h`` with ``γ_h = 1 - 2^{-5-h}``, ``h = 0 .. n_heads - 1`` (eq. 8), fp32 ``[n_heads]``.

    Built on ``device`` directly (no host-to-device copy, so a decoding step can be captured in a CUDA graph).
    """
    return torch.log1p(-torch.exp2(-5.0 - torch.arange(n_heads, dtype=torch.float32, device=device)))


class MultiScaleRetention(LinearAttentionMixer):
    """Multi-scale retention (eq. 8): a fixed decay γ per head and the rotation Θ on queries and keys."""

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__(config)
        self.rotary = RotaryEmbedding(config.head_k_dim, base=config.rope_base)

    def log_decay(self, x: Tensor) -> Tensor:
        """``log γ_h`` broadcast over batch and time: ``[B, T, H]`` fp32."""
        B, T, _ = x.shape
        return retention_decays(self.n_heads, x.device).expand(B, T, self.n_heads)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``Q ⊙ Θ``, ``K ⊙ Θ̄`` (eq. 3): the same rotation of both, so ``q_n·k_m`` sees ``e^{i(n-m)θ}``."""
        cos, sin = self.rotary(positions)  # (B, T, K)
        q = apply_rotary(q.transpose(1, 2), cos, sin).transpose(1, 2)
        k = apply_rotary(k.transpose(1, 2), cos, sin).transpose(1, 2)
        return q, k


class RetNet(LinearAttentionBackbone):
    """RetNet sequence backbone: pre-norm blocks of multi-scale retention and a feed-forward (eq. 9)."""

    config_class: ClassVar[type[ArchConfig]] = RetNetConfig
    config: RetNetConfig
    mixer_class = MultiScaleRetention

    def reset_parameters(self) -> None:
        """Normal(0, ``init_std``), then torchscale's xavier-uniform: gain 2^-2.5 on W_Q, W_K, W_V, W_G, 1 on W_O."""
        super().reset_parameters()
        for mixer in self.mixers():
            for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj, mixer.g_proj, mixer.o_proj):
                if proj is not None:
                    nn.init.xavier_uniform_(proj.weight, gain=1.0 if proj is mixer.o_proj else 2**-2.5)


def from_fla(source: Any, **overrides: Any) -> RetNet:
    """Convert flash-linear-attention's ``RetNetForCausalLM`` (a model or ``(config, state_dict)``) to ``retnet``."""
    hf, state_dict = fla_source(source, "RetNet")
    config = RetNetConfig(**{**fla_config_fields(hf, "RetNet"), **overrides})
    model: RetNet = load_fla(RetNet, config, map_fla_state_dict(state_dict))
    return model
