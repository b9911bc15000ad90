"""RetNet v2: YOCO's gated retention, RetNet's retention with a data-dependent decay per head and step.

Paper: Sun, Dong, Zhu, Huang, Wang, Ma, Zhang, Wang & Wei (2024), "You Only Cache Once: Decoder-Decoder
Architectures for Language Models", https://arxiv.org/abs/2405.05254 (its self-decoder's "gated retention", built on
RetNet, Sun et al. 2023, https://arxiv.org/abs/2307.08621; :mod:`edifice_attention.retnet`). The catalogue names this
entry "Sun et al. 2024 (YOCO-era RetNet refinements)"; ``docs/design/retnet_v2.md`` gives the reading.

Implemented (per head, state ``S ∈ R^{d_k×d_v}``; the layer in :mod:`edifice_attention._linear_attention`):

* gated retention: ``Q = (X W_Q) ⊙ Θ``, ``K = (X W_K) ⊙ Θ̄``, ``V = X W_V``, ``γ = sigmoid(X W_γ)^{1/τ}`` with one
  ``γ`` per head and position (``W_γ ∈ R^{d×h}``, ``τ = 16``), computed in log space as
  ``log γ = logsigmoid(X W_γ) / τ``; Θ is RetNet's rotation (:class:`~edifice_attention.retnet.MultiScaleRetention`);
* its parallel form (``D_nm = Π_{i=m+1..n} γ_i``), recurrent form (``S_n = γ_n S_{n-1} + K_nᵀ V_n``,
  ``gRet(X_n) = Q_n S_n``) and chunkwise form: :func:`edifice.ops.linear_attention` with the data-dependent
  scalar log-decay, the same op as RetNet's fixed ``γ``; queries scaled by ``1/sqrt(d_k)``;
* gated multi-head retention: ``Y = GroupNorm_h(Concat(head_1..head_n))``, ``GMHR(X) = (swish(X W_G) ⊙
  Y) W_O``, with the per-head norm an RMSNorm without gain (YOCO's released code and fla's ``YOCOGatedRetention``);
* the self-decoder block (YOCO's self-decoder): ``Y = ESA(LN(X)) + X``, ``X' = SwiGLU(LN(Y)) + Y`` with RMSNorm.

Deviations: this entry is the self-decoder's stack of gated-retention blocks alone, not the whole decoder-decoder
(YOCO's cross-decoder, softmax attention over the self-decoder's one KV cache, is an attention model of its own).
RoPE pairs channels by halves (``x_i, x_{i+d/2}``, RetNet's entry) where YOCO's code pairs neighbours
(``x_{2i}, x_{2i+1}``); both rotate the same pairs of a permuted basis, so :func:`map_yoco_gated_retention` permutes
the rows of ``W_Q`` and ``W_K`` and the layer computes exactly what YOCO's does. The initialisation is RetNet's
(xavier-uniform with gain ``2^{-2.5}``), with ``W_γ`` drawn like the family's other projections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice_attention.configs.retnet import RetNetConfig
from edifice_attention.configs.retnet_v2 import RetNetV2Config
from edifice_attention.retnet import MultiScaleRetention, RetNet

__all__ = ["GatedRetention", "RetNetV2", "interleaved_to_half", "map_yoco_gated_retention"]


class GatedRetention(MultiScaleRetention):
    """YOCO's gated retention: RetNet's retention whose decay ``γ_t`` is a gate of the input."""

    def __init__(self, config: RetNetConfig) -> None:
        if not isinstance(config, RetNetV2Config):
            raise TypeError(f"GatedRetention needs a RetNetV2Config (retnet_v2), got {type(config).__name__}")
        super().__init__(config)
        self.gk_proj = nn.Linear(config.d_model, config.n_heads, bias=False)  # W_γ, one logit per head
        self.gate_logit_normalizer = config.gate_logit_normalizer
        if not config.output_norm_affine:  # YOCO's per-head norm has no gain
            dim = config.head_v_dim if config.output_norm_per_head else config.n_heads * config.head_v_dim
            self.o_norm = get_norm(config.output_norm, dim, eps=config.norm_eps, elementwise_affine=False)

    def log_decay(self, x: Tensor) -> Tensor:
        """``log γ_t = logsigmoid(x_t W_γ) / τ``, fp32 ``[B, T, H]``."""
        return F.logsigmoid(self.gk_proj(x).float()) / self.gate_logit_normalizer


class RetNetV2(RetNet):
    """Gated-retention backbone: pre-norm blocks of gated retention and a SwiGLU feed-forward (YOCO's self-decoder)."""

    config_class: ClassVar[type[ArchConfig]] = RetNetV2Config
    config: RetNetV2Config
    mixer_class = GatedRetention


def interleaved_to_half(head_dim: int) -> Tensor:
    """The channel order that turns neighbour pairs ``(2i, 2i+1)`` into half pairs ``(i, i + head_dim/2)``."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def map_yoco_gated_retention(state_dict: Mapping[str, Tensor], n_heads: int) -> dict[str, Tensor]:
    """A ``YOCOGatedRetention`` layer's weights (fla / YOCO names) as a :class:`GatedRetention` state dict.

    ``W_Q`` and ``W_K`` rows are permuted within each head (:func:`interleaved_to_half`) so RetNet's half-pair rotation
    reproduces YOCO's interleaved one; the gain-free norm has no weight to map. Unknown keys raise.
    """
    known = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight", "gk_proj.weight", "o_proj.weight"}
    unknown = set(state_dict) - known
    if unknown:
        raise CheckpointError(f"gated retention converter: unexpected keys {sorted(unknown)}")
    out = dict(state_dict)
    for name in ("q_proj.weight", "k_proj.weight"):
        w = state_dict[name]
        head_dim = w.shape[0] // n_heads
        order = interleaved_to_half(head_dim).to(w.device)
        out[name] = w.view(n_heads, head_dim, -1)[:, order].reshape_as(w)
    return out
