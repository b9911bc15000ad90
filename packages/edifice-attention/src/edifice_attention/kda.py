"""KDA: Kimi Delta Attention, the gated delta rule whose decay is a vector over the key channels.

Paper: Kimi Team (2025), "Kimi Linear: An Expressive, Efficient Attention Architecture",
https://arxiv.org/abs/2510.26692 (its "Kimi Delta Attention"); the layer as released in flash-linear-attention's
``KimiDeltaAttention`` (by the authors).

Implemented (per head, state ``S ∈ R^{d_k×d_v}``; the layer in :mod:`edifice_attention._linear_attention`):

* the recurrence: ``S_t = (I - β_t k_t k_tᵀ) Diag(α_t) S_{t-1} + β_t k_t v_tᵀ``, ``o_t = S_tᵀ q_t`` (queries scaled by
  ``1/sqrt(d_k)``) -- Gated DeltaNet's rule with the scalar ``α_t`` refined to a decay per key channel (GLA-style);
  written as the diagonal-plus-low-rank transition of :func:`edifice.ops.generalized_delta_rule`,
  ``S_t = (Diag(α_t) + b_t a_tᵀ) S_{t-1} + k̃_t v_tᵀ`` with ``a = -α_t ⊙ k_t``, ``b = β_t k_t``, ``k̃ = β_t k_t``;
  the op's chunked WY form (the paper's chunkwise algorithm, UT transform) is the training path, its recurrent form
  ``step``'s;
* the layer: ``q, k, v = SiLU(ShortConv(x W_{q,k,v}))``, ``q, k`` L2-normalised per head; the decay
  ``log α_t = -exp(A_log) · softplus(x W_α↓ W_α↑ + dt_bias)`` (a low-rank projection to one log-decay per key channel,
  Mamba-2's parameterisation with ``A_log`` per head and ``dt_bias`` per channel); ``β_t = σ(x W_β)`` per head;
  the read-out ``o = W_o(σ(x W_g↓ W_g↑) ⊙ RMSNorm_h(o))`` (a low-rank sigmoid output gate, per-head RMSNorm);
  pre-norm RMSNorm blocks with a SwiGLU feed-forward (fla's ``KDAForCausalLM``);
* initialisation (the authors' code): ``A = exp(A_log) ~ U(1, 16)``, ``dt = softplus(dt_bias) ~ logU(1e-3, 0.1)``.

Deviations: Kimi Linear interleaves KDA with MLA (softmax attention) layers at 3:1 and uses MoE feed-forwards; this
entry is the KDA layer stacked alone (as fla's ``KDAForCausalLM``). The optional ``lower_bound``/``safe_gate`` gate of
fla (a sigmoid-bounded decay for a faster kernel) and grouped value heads are not offered (the converter refuses them).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
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
from edifice_attention.configs.kda import KDAConfig

__all__ = ["KDA", "KimiDeltaAttention", "from_fla"]

#: Epsilon of the q/k L2 normalisation (the authors' kernel: ``x / sqrt(Σ x² + eps)``).
L2_EPS = 1e-6


class KimiDeltaAttention(LinearAttentionMixer):
    """KDA's token mixer: L2-normalised q/k, a per-channel decay and a write strength β per head."""

    vector_decay = True

    def __init__(self, config: KDAConfig) -> None:
        super().__init__(config)
        H, K, V, r = config.n_heads, config.head_k_dim, config.head_v_dim, config.low_rank
        # W_α↓ [d, r] then W_α↑ [r, H·K] (fla's f_proj), W_β [d, H], A_log [H], dt_bias [H·K].
        self.f_proj = nn.Sequential(nn.Linear(config.d_model, r, bias=False), nn.Linear(r, H * K, bias=False))
        self.b_proj = nn.Linear(config.d_model, H, bias=False)
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H * K))
        # The output gate is low-rank too: σ(x W_g↓ W_g↑ + b_g) (replaces the family's single W_g).
        low_rank_gate = nn.Sequential(nn.Linear(config.d_model, r, bias=False), nn.Linear(r, H * V, bias=True))
        self.g_proj = low_rank_gate  # type: ignore[assignment]  # the base's _output only calls it
        self.allow_neg_eigval = config.allow_neg_eigval
        self.reset_decay_parameters()

    def reset_decay_parameters(self) -> None:
        """``A ~ U(1, 16)`` per head and ``softplus(dt_bias) ~ logU(1e-3, 0.1)`` per channel (the authors' init)."""
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
            dt = torch.exp(torch.rand_like(self.dt_bias) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            dt = dt.clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)

    def log_decay(self, x: Tensor) -> Tensor:
        """``log α_t = -exp(A_log) softplus(x W_α↓ W_α↑ + dt_bias)``, fp32 ``[B, T, H, d_k]``."""
        B, T, _ = x.shape
        logits = self.f_proj(x).float().view(B, T, self.n_heads, self.head_k_dim)
        bias = self.dt_bias.float().view(self.n_heads, self.head_k_dim)
        return -self.A_log.float().exp()[:, None] * F.softplus(logits + bias)

    def gates(
        self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, **inputs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """L2-normalised ``q, k``; ``g`` carries ``[log α_t | β_t]`` ``[B, T, H, d_k + 1]`` to :meth:`attend`.

        β rides with the decay so that padding masks both (a pad's ``k = 0``, ``g = 0`` is the identity update).
        """
        if self.convs is None:  # without short convolutions the SiLU is applied to the projections directly
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        beta = torch.sigmoid(self.b_proj(x).float())  # (B, T, H)
        if self.allow_neg_eigval:
            beta = beta * 2.0  # eigenvalues 1 - β of I - β k kᵀ in (-1, 1) (Grazzi et al. 2024)
        g = torch.cat([self.log_decay(x), beta[..., None]], -1)
        return _l2_normalize(q), _l2_normalize(k), v, g

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, initial: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The KDA recurrence through :func:`edifice.ops.generalized_delta_rule`: ``a = -α ⊙ k``, ``b = k̃ = β k``."""
        assert g is not None, "KimiDeltaAttention: gates() always gives the decay and β"
        log_alpha, beta = g[..., :-1], g[..., -1:]
        k32 = k.float()
        b = beta * k32  # (B, T, H, K)
        a = -log_alpha.exp() * k32
        o, final = ops.generalized_delta_rule(
            q, b, v, a, b, log_alpha, scale=self.scale, initial_state=initial, chunk_size=self.chunk_size
        )
        return o.to(v.dtype), final  # the op's one-position form returns fp32 for low-precision inputs


def _l2_normalize(x: Tensor) -> Tensor:
    """``x / sqrt(Σ x² + eps)`` over the last dim in fp32, back in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().sum(-1, keepdim=True) + L2_EPS)).to(x.dtype)


class KDA(LinearAttentionBackbone):
    """KDA backbone: pre-norm blocks of Kimi Delta Attention and a SwiGLU feed-forward."""

    config_class: ClassVar[type[ArchConfig]] = KDAConfig
    config: KDAConfig
    mixer_class = KimiDeltaAttention

    def reset_parameters(self) -> None:
        """The family's normal init, then each layer's ``A_log`` and ``dt_bias`` (the authors' decay init)."""
        super().reset_parameters()
        for mixer in self.mixers():
            cast(KimiDeltaAttention, mixer).reset_decay_parameters()


def from_fla(source: Any, **overrides: Any) -> KDA:
    """Convert flash-linear-attention's ``KDAForCausalLM`` (a model or ``(config, state_dict)``) to ``kda``."""
    hf, state_dict = fla_source(source, "KDA")
    H, head_dim, d = fla_get(hf, "num_heads"), fla_get(hf, "head_dim"), fla_get(hf, "hidden_size")
    refused = {
        "num_v_heads": fla_get(hf, "num_v_heads") not in (None, H),  # grouped value heads
        "lower_bound": fla_get(hf, "lower_bound") is not None,  # the sigmoid-bounded gate
        "safe_gate": bool(fla_get(hf, "safe_gate", False)),
    }
    for name, bad in refused.items():
        if bad:
            raise CheckpointError(f"KDA converter: {name}={fla_get(hf, name)!r} is not supported by this model")
    expand_v = float(fla_get(hf, "expand_v", 1.0))
    fields = {
        **fla_config_fields(
            {**_as_dict(hf), "expand_k": H * head_dim / d, "expand_v": H * head_dim * expand_v / d}, "KDA"
        ),
        "use_short_conv": bool(fla_get(hf, "use_short_conv", True)),
        "output_gate_act": "sigmoid",
        "allow_neg_eigval": bool(fla_get(hf, "allow_neg_eigval", False)),
    }
    config = KDAConfig(**{**fields, **overrides})
    model: KDA = load_fla(KDA, config, map_fla_state_dict(state_dict))
    return model


def _as_dict(config: Any) -> dict[str, Any]:
    """An fla config object or dict as a plain dict."""
    return dict(config) if isinstance(config, dict) else config.to_dict()
