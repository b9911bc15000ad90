"""RLA and RDN: linear attention (or the delta rule) with an auxiliary state that fits its own prediction residuals.

Paper: Lai, Kang, Lu, Lin & Zhao (2025), "Enhancing Linear Attention with Residual Learning",
https://arxiv.org/abs/2509.25223. ``rla`` is Residual Linear Attention, ``rdn`` the Residual Delta Net; one class,
``variant`` fixed by the registry name.

Implemented, per head, in the paper's layout (states ``S, R ∈ R^{d_v×d_k}``; stored transposed, ``[d_k, d_v]``, as
the ops use), with the gates ``α_t = exp(-A·softplus(x_t w_α + Δ))`` (Mamba-2's decay), ``β_t = σ(x_t w_β)`` (the
base write strength) and ``γ_t = σ(x_t w_γ)`` (the correction factor, decoupled from ``β``):

* the residual of the base prediction, clipped (§3, "residual clipping", ``c = clip_threshold``):
  ``r_t = Clip_[-c, c](v_t - S_{t-1} k_t)``;
* RLA (``variant='linear'``): ``S_t = α_t S_{t-1} + β_t v_t k_tᵀ``, ``R_t = α_t R_{t-1} + γ_t r_t k_tᵀ``;
* RDN (``variant='delta'``): ``S_t = α_t S_{t-1}(I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ``,
  ``R_t = α_t R_{t-1}(I - γ_t k_t k_tᵀ) + γ_t r_t k_tᵀ``;
* the read-out, base prediction plus correction: ``o_t = α_t S_{t-1} q_t + γ_t R_t q_t`` (queries scaled by
  ``1/sqrt(d_k)``);
* the layer around it, Gated DeltaNet's (the paper's baseline): q, k, v through short causal convolutions and SiLU,
  q and k L2-normalised, a per-head RMSNorm on the read-out gated by ``SiLU(x W_g)``, ``W_O``; pre-norm RMSNorm blocks
  with a SwiGLU feed-forward.

Both states go through the family's ops, in two passes (as the paper reuses fla's kernels): the base pass needs the
*pre-write* read-outs ``S_{t-1} q_t`` and ``S_{t-1} k_t``, which the ops (they read ``S_t``) give when fed the next
position's query: one call on doubled heads with queries ``[q_{t+1}, k_{t+1}]`` (the first position reads the initial
state directly). The residual pass is an ordinary call with values ``r``. RLA uses :func:`edifice.ops.linear_attention`
(scalar decay; values ``β v`` and ``γ r``), RDN :func:`edifice.ops.gated_delta_rule` (``β`` and ``γ`` as the write
strengths). Both are chunked for a sequence and recurrent for one position; the state is ``[S, R]`` along the value
axis, ``[B, H, d_k, 2 d_v]``.

Sources and deviations: the paper's full text could not be read here; the equations above are those quoted from it by
two independent write-ups (the original Edifice design notes and a technique summary), which agree. The residual uses
the undecayed ``S_{t-1}`` and the output ``γ_t R_t q_t`` exactly as quoted. The base pass costs twice a plain call (the
doubled heads) instead of a fused kernel that returns the residual. No pretrained reference exists (fla has no RLA),
so the signature test is an fp64 token loop of these equations.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.config import ArchConfig
from edifice_attention._linear_attention import LinearAttentionBackbone, LinearAttentionMixer
from edifice_attention.configs.rla import ResidualLinearAttentionConfig

__all__ = ["ResidualLinearAttention", "ResidualLinearAttentionMixer", "residual_linear_attention"]


def _read(state: Tensor, x: Tensor) -> Tensor:
    """``stateᵀ x`` per head: state ``[B, H, K, V]``, x ``[B, H, K]`` -> ``[B, H, V]``."""
    return torch.einsum("bhkv,bhk->bhv", state, x)


def residual_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor,
    beta: Tensor,
    gamma: Tensor,
    *,
    variant: str,
    clip: float,
    scale: float,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """RLA/RDN (module doc) on q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, gates ``[B, T, H]``.

    ``initial_state`` ``[B, H, K, 2V]`` is ``[S, R]`` (zeros when None). Returns ``(o [B, T, H, V], final state
    [B, H, K, 2V])`` in fp32 (fp64 for fp64 inputs).
    """
    B, _, H, K = q.shape
    V = v.shape[-1]
    work = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    q, k, v, g, beta, gamma = (t.to(work) for t in (q, k, v, log_alpha, beta, gamma))
    if initial_state is None:
        initial_state = q.new_zeros(B, H, K, 2 * V)
    initial_state = initial_state.to(work)
    S0, R0 = initial_state[..., :V], initial_state[..., V:]
    # Base pass on doubled heads: head h reads with q_{t+1}·scale, head H + h with k_{t+1}; both states are S.
    queries = torch.cat([q * scale, k], 2)  # (B, T, 2H, K)
    shifted = torch.cat([queries[:, 1:], torch.zeros_like(queries[:, :1])], 1)  # position t holds t + 1's queries
    twice: dict[str, Any] = {"initial_state": torch.cat([S0, S0], 1), "chunk_size": chunk_size, "scale": 1.0}
    k2, g2 = torch.cat([k, k], 2), torch.cat([g, g], 2)
    if variant == "delta":
        after, S = ops.gated_delta_rule(shifted, k2, torch.cat([v, v], 2), torch.cat([beta, beta], 2), g2, **twice)
    else:
        bv = beta[..., None] * v
        after, S = ops.linear_attention(shifted, k2, torch.cat([bv, bv], 2), g2, **twice)
    first = torch.stack([_read(S0, queries[:, 0, :H]), _read(S0, queries[:, 0, H:])], 1).flatten(1, 2)  # (B, 2H, V)
    before = torch.cat([first[:, None], after[:, :-1].to(work)], 1)  # (B, T, 2H, V): S_{t-1}ᵀ [q_t·scale, k_t]
    base = g.exp()[..., None] * before[:, :, :H]  # α_t S_{t-1} q_t
    r = (v - before[:, :, H:]).clamp(-clip, clip)  # Clip(v_t - S_{t-1} k_t)
    # Residual pass: R_t = α_t R_{t-1} (delta: (I - γ_t k_t k_tᵀ)) + γ_t r_t k_tᵀ, read with q_t.
    once: dict[str, Any] = {"initial_state": R0, "chunk_size": chunk_size, "scale": scale}
    if variant == "delta":
        read, R = ops.gated_delta_rule(q, k, r, gamma, g, **once)
    else:
        read, R = ops.linear_attention(q, k, gamma[..., None] * r, g, **once)
    o = base + gamma[..., None] * read.to(work)
    return o, torch.cat([S[:, :H].to(work), R.to(work)], -1)


class ResidualLinearAttentionMixer(LinearAttentionMixer):
    """The RLA/RDN token mixer: Gated DeltaNet's layer around :func:`residual_linear_attention`."""

    def __init__(self, config: ResidualLinearAttentionConfig) -> None:
        super().__init__(config)
        H = config.n_heads
        self.variant = config.variant
        self.clip = config.clip_threshold
        self.state_v_dim = 2 * config.head_v_dim  # [S, R]
        self.a_proj = nn.Linear(config.d_model, H, bias=False)  # decay logits (Mamba-2's Δ before the bias)
        self.b_proj = nn.Linear(config.d_model, H, bias=False)  # β
        self.c_proj = nn.Linear(config.d_model, H, bias=False)  # γ
        self.A_log = nn.Parameter(torch.zeros(H))
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.A_init_range = config.A_init_range
        self.dt_range = (config.dt_min, config.dt_max)
        self.reset_gates()

    def reset_gates(self) -> None:
        """Mamba-2's decay init: ``A ~ U(A_init_range)``, ``Δ ~ logU(dt_min, dt_max)`` stored as softplus⁻¹(Δ)."""
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(*self.A_init_range).log())
            low, high = (math.log(d) for d in self.dt_range)
            dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(low, high)).clamp_min(1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def gates(
        self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, **inputs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """L2-normalised q, k; ``log α = -A·softplus(x w_α + Δ)``; β and γ ride along as two extra value channels.

        (The shared layer masks ``k`` and ``g`` at padded positions, which makes both states' updates exact
        identities there; β and γ need no masking.)
        """
        work = torch.promote_types(x.dtype, torch.float32)  # gates in fp32 (fp64 for fp64 inputs)
        A, dt_bias = self.A_log.to(work).exp(), self.dt_bias.to(work)
        g = -A * F.softplus(self.a_proj(x).to(work) + dt_bias)  # (B, T, H)
        beta, gamma = (torch.sigmoid(proj(x).to(work)) for proj in (self.b_proj, self.c_proj))
        extra = torch.stack([beta, gamma], -1).to(v.dtype)  # (B, T, H, 2)
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), torch.cat([v, extra], -1), g

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, initial: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """:func:`residual_linear_attention` with the gates carried in ``v``'s last two channels."""
        assert g is not None
        values, beta, gamma = v[..., :-2], v[..., -2], v[..., -1]
        o, final = residual_linear_attention(
            q, k, values, g, beta, gamma, variant=self.variant, clip=self.clip,
            scale=self.head_k_dim**-0.5, initial_state=initial, chunk_size=self.chunk_size,
        )  # fmt: skip
        return o.to(values.dtype), final


class ResidualLinearAttention(LinearAttentionBackbone):
    """RLA / RDN backbone: pre-norm blocks of the residual-fitting mixer and a SwiGLU feed-forward."""

    config_class: ClassVar[type[ArchConfig]] = ResidualLinearAttentionConfig
    config: ResidualLinearAttentionConfig
    mixer_class = ResidualLinearAttentionMixer

    def reset_parameters(self) -> None:
        """fla's normal(0, init_std) linears, then each mixer's Mamba-2 decay parameters."""
        super().reset_parameters()
        for mixer in self.mixers():
            cast(ResidualLinearAttentionMixer, mixer).reset_gates()
