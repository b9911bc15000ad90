"""GSA: Gated Slot Attention, a bounded memory of ``m`` key/value slots per head, written through a forget gate and
read by a softmax -- two passes of gated linear attention with a softmax between them.

Paper: Zhang, Yang, Zhu, Zhang, Cui, Wang, Wang, Shi, Wang, Bi, Zhou & Fu (2024), "Gated Slot Attention for Efficient
Linear-Time Sequence Modeling", NeurIPS 2024, https://arxiv.org/abs/2409.07146; the layer as released by the authors
in flash-linear-attention (``GatedSlotAttention``). ``docs/design/gsa.md`` explains the mapping onto the ops.

Implemented (per head; the layer in :mod:`edifice_attention._linear_attention`):

* the gated bounded memory (ABC's slots with GLA's forget gate), ``α_t = σ(x_t W_α)^{1/τ} ∈ (0, 1)^m``
  (``τ = 8``, computed as ``log α = logsigmoid(x W_α)/τ``)::

      K̃_t = Diag(α_t) K̃_{t-1} + (1 - α_t) ⊗ k_t ∈ R^{m×d_k}       Ṽ_t = Diag(α_t) Ṽ_{t-1} + (1 - α_t) ⊗ v_t ∈ R^{m×d_v}
      o_t = Ṽ_tᵀ softmax(K̃_t q_t)

* the paper's "GSA as two-pass GLA": pass 1 ``o'_t = K̃_t q_t ∈ R^m`` is linear attention whose decay acts on its output
  (slot) dimension; for every slot ``j`` it is ``o'_tj = Σ_{i<=t} (Π_{r=i+1..t} α_rj) (1 - α_ij) (k_i · q_t)``, i.e.
  linear attention with the scalar decay ``α_j``, key ``(1 - α_j) k`` and a value of 1, run as ``m`` heads per head
  by :func:`edifice.ops.linear_attention` (its state is the column ``K̃_{:, j}``). Pass 2 ``o_t = Ṽ_tᵀ
  softmax(o'_t)`` is GLA with query ``softmax(o'_t)``, key ``1 - α_t``, value ``v_t`` and the decay ``α_t`` on its key
  (slot) dimension: :func:`edifice.ops.gated_linear_attention`. Both ops' chunked forms are the training path and
  their recurrent forms ``step``'s; the decoding state is ``[K̃ | Ṽ] ∈ R^{m×(d_k + d_v)}`` per head;
* the layer (the paper and the authors' code): ``q, k = Swish(x W_{q,k})``, ``v = Swish(x W_v)``, scores ``K̃_t q_t``
  unscaled, the read-out ``RMSNorm(Swish(o)) W_o`` (one RMSNorm over all heads); pre-norm RMSNorm blocks with a
  SwiGLU feed-forward (fla's ``GSAForCausalLM``).

Deviations: none from the released layer. Grouped key/value heads (``num_kv_heads``) and the learned T2R feature map
are not offered (the converter refuses them).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice_attention._linear_attention import (
    LinearAttentionBackbone,
    LinearAttentionMixer,
    LinearAttentionState,
    fla_config_fields,
    fla_get,
    fla_source,
    load_fla,
    map_fla_state_dict,
)
from edifice_attention.configs.gsa import GSAConfig

__all__ = ["GSA", "GatedSlotAttention", "from_fla"]


class GatedSlotAttention(LinearAttentionMixer):
    """GSA's token mixer: a forget gate over ``m`` slots, two passes of gated linear attention, softmax between."""

    vector_decay = True

    def __init__(self, config: GSAConfig) -> None:
        super().__init__(config)
        self.num_slots = config.num_slots
        self.f_proj = nn.Linear(config.d_model, config.n_heads * config.num_slots, bias=False)  # W_α
        self.gate_logit_normalizer = config.gate_logit_normalizer
        self.scale = config.query_scale

    def log_decay(self, x: Tensor) -> Tensor:
        """``log α_t = logsigmoid(x_t W_α) / τ``, fp32 ``[B, T, H, m]``."""
        B, T, _ = x.shape
        g = F.logsigmoid(self.f_proj(x).float()) / self.gate_logit_normalizer
        return g.view(B, T, self.n_heads, self.num_slots)

    def gates(
        self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, **inputs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``v = Swish(x W_v)`` (q and k have the feature map); ``g = log α`` over the slots."""
        return q, k, F.silu(v), self.log_decay(x)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LinearAttentionState:
        """Zero conv histories and zero slot memories ``[K̃ | Ṽ]`` ``[B, H, m, d_k + d_v]`` (fp32)."""
        state = super().init_state(batch_size, device=device, dtype=dtype)
        state.recurrent = state.recurrent.new_zeros(
            batch_size, self.n_heads, self.num_slots, self.head_k_dim + self.head_v_dim
        )
        return state

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, initial: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The two passes (module doc) from the memories ``initial = [K̃ | Ṽ]``; returns ``(o, [K̃ | Ṽ] after)``."""
        assert g is not None, "GatedSlotAttention: gates() always gives the forget gate"
        B, T, H, K = q.shape
        M = self.num_slots
        s = -torch.expm1(g)  # 1 - α_t, (B, T, H, m) fp32
        keys0 = slots0 = None
        if initial is not None:
            keys0 = initial[..., :K].reshape(B, H * M, K, 1)  # K̃ column by column: one [d_k, 1] state per slot
            slots0 = initial[..., K:]  # Ṽ (B, H, m, d_v)
        # Pass 1: o'_tj = K̃_t[j] q_t, one scalar-decay head per (head, slot) with key (1 - α_tj) k_t and value 1.
        q1 = q.unsqueeze(3).expand(B, T, H, M, K).reshape(B, T, H * M, K)
        k1 = (k.unsqueeze(3) * s.unsqueeze(-1).to(k.dtype)).reshape(B, T, H * M, K)
        ones = q.new_ones(B, T, H * M, 1)
        scores, keys = ops.linear_attention(
            q1, k1, ones, g.reshape(B, T, H * M), scale=self.scale, initial_state=keys0, chunk_size=self.chunk_size
        )
        # Pass 2: o_t = Ṽ_tᵀ softmax(o'_t): GLA over the slots with key 1 - α_t and the decay α_t.
        probs = scores.view(B, T, H, M).float().softmax(-1).to(v.dtype)
        o, slots = ops.gated_linear_attention(
            probs, s.to(v.dtype), v, g, scale=1.0, initial_state=slots0, chunk_size=self.chunk_size
        )
        return o, torch.cat([keys.view(B, H, M, K), slots], -1)

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """``RMSNorm(Swish(o))`` over all heads; GSA has no output gate."""
        return super()._output(F.silu(o), x)


class GSA(LinearAttentionBackbone):
    """GSA backbone: pre-norm blocks of gated slot attention and a SwiGLU feed-forward."""

    config_class: ClassVar[type[ArchConfig]] = GSAConfig
    config: GSAConfig
    mixer_class = GatedSlotAttention


def from_fla(source: Any, **overrides: Any) -> GSA:
    """Convert flash-linear-attention's ``GSAForCausalLM`` (a model or ``(config, state_dict)``) to ``gsa``."""
    hf, state_dict = fla_source(source, "GSA")
    feature_map = fla_get(hf, "feature_map", "swish")
    for name, bad in (
        ("feature_map", feature_map not in ("swish", "relu")),
        ("use_output_gate", bool(fla_get(hf, "use_output_gate", False))),
        ("use_norm", not fla_get(hf, "use_norm", True)),
    ):
        if bad:
            raise CheckpointError(f"GSA converter: {name}={fla_get(hf, name)!r} is not supported by this model")
    fields = {
        **fla_config_fields(hf, "GSA"),
        "feature_map": "silu" if feature_map == "swish" else feature_map,
        "use_output_gate": False,
        "output_norm_per_head": False,
        "num_slots": fla_get(hf, "num_slots")
        or round(fla_get(hf, "hidden_size") * fla_get(hf, "expand_k")) // fla_get(hf, "num_heads"),
        "gate_logit_normalizer": float(fla_get(hf, "gate_logit_normalizer", 8)),
    }
    config = GSAConfig(**{**fields, **overrides})
    model: GSA = load_fla(GSA, config, map_fla_state_dict(state_dict))
    return model
