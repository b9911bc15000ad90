"""GLA: Gated Linear Attention, linear attention whose state decays per key channel by a data-dependent gate.

Paper: Yang, Wang, Shen, Panda & Kim (2023), "Gated Linear Attention Transformers with Hardware-Efficient Training",
ICML 2024, https://arxiv.org/abs/2312.06635.

Implemented (per head, state ``S ∈ R^{d_k×d_v}``; the layer in :mod:`edifice_attention._linear_attention`):

* eq. 3 / §4.1: ``S_t = Diag(α_t) S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t`` (queries scaled by ``1/sqrt(d_k)``), the
  gate ``G_t = α_tᵀ 1`` acting on the key channels;
* §4.4, the gate: ``α_t = σ(x_t W_α1 W_α2 + b_α)^{1/τ}``, a rank-16 projection and ``τ = 16``; computed in log space
  as ``log α_t = logsigmoid(x_t W_α1 W_α2 + b_α) / τ`` (optionally clamped from below, fla's ``clamp_min``);
* §4.2-4.3, the chunkwise form with secondary-level chunking (the training path) and the recurrent form (``step``):
  :func:`edifice.ops.gated_linear_attention`;
* §4.4, the layer: ``d_k = d/2``, ``d_v = d`` over 4 heads, ``r_t = Swish(x_t W_r)``, ``y_t = (r_t ⊙ Norm_h(o_t))
  W_O`` with a per-head norm; pre-norm blocks with a SwiGLU FFN (the LLaMA recipe of §5).

Deviations: the per-head norm of the read-out is an RMSNorm and the blocks use RMSNorm, as in the authors' released
code (flash-linear-attention's ``GatedLinearAttention``), where the paper writes LayerNorm; ``output_norm`` and
``norm`` select LayerNorm. The output gate has no bias (fla). :func:`from_fla` converts fla's ``GLAForCausalLM``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice_attention._linear_attention import (
    LinearAttentionBackbone,
    LinearAttentionMixer,
    fla_config_fields,
    fla_get,
    fla_source,
    load_fla,
    map_fla_state_dict,
)
from edifice_attention.configs.gla import GLAConfig

__all__ = ["GLA", "GatedLinearAttention", "from_fla"]


class GatedLinearAttention(LinearAttentionMixer):
    """GLA's token mixer: a low-rank, data-dependent decay ``α_t ∈ (0, 1)^{d_k}`` per head (§4.4)."""

    vector_decay = True

    def __init__(self, config: GLAConfig) -> None:
        super().__init__(config)
        key_dim = config.n_heads * config.head_k_dim
        # W_α1 [d, 16] then W_α2 [16, d_k] with the bias b_α (fla's gk_proj layout).
        self.gk_proj = nn.Sequential(
            nn.Linear(config.d_model, config.gate_low_rank_dim, bias=False),
            nn.Linear(config.gate_low_rank_dim, key_dim, bias=True),
        )
        self.gate_logit_normalizer = config.gate_logit_normalizer
        self.clamp_min = config.clamp_min

    def log_decay(self, x: Tensor) -> Tensor:
        """``log α_t = logsigmoid(x W_α1 W_α2 + b_α) / τ`` (§4.4), fp32 ``[B, T, H, d_k]``."""
        B, T, _ = x.shape
        g = F.logsigmoid(self.gk_proj(x).float()) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            g = g.clamp_min(self.clamp_min)
        return g.view(B, T, self.n_heads, self.head_k_dim)


class GLA(LinearAttentionBackbone):
    """GLA sequence backbone: pre-norm blocks of gated linear attention and a SwiGLU feed-forward."""

    config_class: ClassVar[type[ArchConfig]] = GLAConfig
    config: GLAConfig
    mixer_class = GatedLinearAttention


def from_fla(source: Any, **overrides: Any) -> GLA:
    """Convert flash-linear-attention's ``GLAForCausalLM`` (a model or ``(config, state_dict)``) to ``gla``."""
    hf, state_dict = fla_source(source, "GLA")
    for name, want in (("use_gk", True), ("use_gv", False)):
        if bool(fla_get(hf, name, want)) != want:
            raise CheckpointError(f"GLA converter: {name}={not want} is not supported (GLA gates the keys only)")
    fields = {**fla_config_fields(hf, "GLA"), "clamp_min": fla_get(hf, "clamp_min")}
    config = GLAConfig(**{**fields, **overrides})
    model: GLA = load_fla(GLA, config, map_fla_state_dict(state_dict))
    return model
