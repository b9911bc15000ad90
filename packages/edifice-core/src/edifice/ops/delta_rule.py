"""The delta rule and the gated delta rule: a matrix-valued fast-weight state corrected toward each new value.

With a state ``S ∈ R^{K×V}`` per head (fp32), key ``k_t`` (L2-normalised by the caller), value ``v_t``, write
strength ``β_t ∈ (0, 2)`` and, for the gated rule, a log-decay ``g_t <= 0`` (``α_t = exp(g_t)``):

* delta rule (Schlag et al. 2021, arXiv:2102.11174; Yang et al. 2024, arXiv:2406.06484, eq. 1):
  ``S_t = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``, i.e. ``S_{t-1}`` is moved toward ``v_t`` at ``k_t``;
* gated delta rule (Yang, Kautz & Hatamizadeh 2024, arXiv:2412.06464, eq. 10):
  ``S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``;
* output ``o_t = S_tᵀ (scale · q_t)`` (the state after the update is read).

The reference is the chunked WY form (Yang et al. 2024 §3.2-3.3, eqs. 6-9; Gated DeltaNet §3.3, eqs. 11-12): inside a
chunk of ``C`` steps with in-chunk cumulative log-decay ``γ_r = Σ_{s<=r} g_s`` and ``L_{ij} = exp(γ_i - γ_j)`` for
``i >= j``, the pseudo-values ``U = (v_t - decayed S readout)·β`` solve the unit lower-triangular system

    (I + tril₋₁(diag(β) K Kᵀ ⊙ L)) U = diag(β) V - diag(β exp(γ)) K S₀      (the UT transform, eq. 8),

written ``U = T (diag(β) V) - W S₀`` with ``W = T diag(β exp(γ)) K``; then every output of the chunk is
``O = diag(exp(γ)) Q S₀ + (Q Kᵀ ⊙ L) U`` and the state leaving it ``S = exp(γ_C) S₀ + (K ⊙ exp(γ_C - γ))ᵀ U``.
All chunks' ``T``, ``W`` and intra-chunk products are computed at once; only the ``C``-step hand-over of ``S`` loops
over chunks. The triangular system is solved with ``torch.linalg.solve_triangular`` (differentiable), not by
the per-row substitution loop of the Triton kernels.

Layout (flash-linear-attention's): q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, beta and g ``[B, T, H]``,
initial_state and final state ``[B, H, K, V]`` (fp32). Both ops return ``(o [B, T, H, V], final_state)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op

__all__ = [
    "CHUNK",
    "check_delta_rule",
    "check_gated_delta_rule",
    "delta_rule",
    "delta_rule_naive",
    "delta_rule_reference",
    "gated_delta_rule",
    "gated_delta_rule_naive",
    "gated_delta_rule_reference",
]

#: Default steps per chunk of the WY form (flash-linear-attention's choice): a C×C triangular solve per chunk.
CHUNK = 64

DeltaOut = tuple[torch.Tensor, torch.Tensor]


# -- argument checks ----------------------------------------------------------------------------------------------
def _check(
    op: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    scale: float | None,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> None:
    """Shared layout checks of both ops; every message names the expected shape."""
    expect_rank(op, "q", q, 4, "[B, T, H, K]")
    B, T, H, K = q.shape
    expect_rank(op, "k", k, 4, "[B, T, H, K]")
    expect_rank(op, "v", v, 4, "[B, T, H, V]")
    expect_rank(op, "beta", beta, 3, "[B, T, H]")
    expect_floating(op, q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state)
    if tuple(k.shape) != (B, T, H, K):
        raise ValueError(f"{op}: k must be [B, T, H, K] = {fmt_shape(q.shape)} like q, got {fmt_shape(k.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(
            f"{op}: v must be [B, T, H, V] with [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(v.shape)}"
        )
    if tuple(beta.shape) != (B, T, H):
        raise ValueError(f"{op}: beta must be [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(beta.shape)}")
    if g is not None:
        expect_rank(op, "g", g, 3, "[B, T, H]")
        if tuple(g.shape) != (B, T, H):
            raise ValueError(f"{op}: g must be [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(g.shape)}")
    if initial_state is not None:
        want = (B, H, K, v.shape[-1])
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != want:
            got = fmt_shape(initial_state.shape) if isinstance(initial_state, torch.Tensor) else "a non-tensor"
            raise ValueError(f"{op}: initial_state must be [B, H, K, V] = {fmt_shape(want)}, got {got}")
    if scale is not None and not (isinstance(scale, int | float) and scale > 0):
        raise ValueError(f"{op}: scale must be a positive number or None (K ** -0.5), got {scale!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")


def check_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    _check("delta_rule", q, k, v, beta, None, scale, initial_state, chunk_size)


def check_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"gated_delta_rule: g must be a tensor [B, T, H] of log-decays, got {type(g).__name__}")
    _check("gated_delta_rule", q, k, v, beta, g, scale, initial_state, chunk_size)


# -- chunked WY form (the reference) ------------------------------------------------------------------------------
def _chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    scale: float | None,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> DeltaOut:
    """The (gated) delta rule in chunked WY form; ``g=None`` is no decay. Returns (o in v's dtype, fp32 state)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    scale = K**-0.5 if scale is None else scale
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T

    def chunks(x: torch.Tensor) -> torch.Tensor:
        # (B, T, H, *) -> (B, H, N, C, *) in fp32; padded steps have k = v = beta = g = 0: identity updates.
        x = x.float().transpose(1, 2)
        x = F.pad(x, [0, 0] * (x.dim() - 3) + [0, pad])
        return x.reshape(B, H, N, C, *x.shape[3:])

    qc, kc, vc, bc = chunks(q) * scale, chunks(k), chunks(v), chunks(beta)  # (B, H, N, C, K|V), beta (B, H, N, C)
    gamma = chunks(g).cumsum(-1) if g is not None else bc.new_zeros(B, H, N, C)  # γ_r, in-chunk cumulative log-decay
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # L_ij = exp(γ_i - γ_j) for i >= j, 0 above the diagonal (masked before exp, so nothing overflows).
    decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, -math.inf).exp()  # (B, H, N, C, C)
    k_beta = kc * bc[..., None]
    # Eq. 8: the UT transform T = (I + tril₋₁(diag(β) K Kᵀ ⊙ L))⁻¹, applied by a unit-triangular solve.
    system = (k_beta @ kc.transpose(-1, -2) * decay).tril(-1) + torch.eye(C, device=q.device)
    rhs = torch.cat([vc * bc[..., None], k_beta * gamma.exp()[..., None]], -1)  # (B, H, N, C, V + K)
    solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    u, w = solved[..., :V], solved[..., V:]  # T·diag(β)V (B, H, N, C, V) and W = T·diag(β e^γ)K (B, H, N, C, K)
    attn = qc @ kc.transpose(-1, -2) * decay  # (B, H, N, C, C): (Q Kᵀ ⊙ L), causal with the diagonal
    q_in = qc * gamma.exp()[..., None]  # what each query reads of the state entering its chunk
    k_out = kc * (gamma[..., -1:] - gamma).exp()[..., None]  # each key's decay to the chunk's end
    chunk_decay = gamma[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1)

    S = q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    outs = []
    for n in range(N):  # hand the (K×V) state from chunk to chunk; everything inside a chunk is batched
        u_n = u[:, :, n] - w[:, :, n] @ S  # eq. 9: pseudo-values given the entering state, (B, H, C, V)
        outs.append(q_in[:, :, n] @ S + attn[:, :, n] @ u_n)
        S = chunk_decay[:, :, n] * S + k_out[:, :, n].transpose(-1, -2) @ u_n
    o = torch.stack(outs, 2).reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)  # (B, T, H, V)
    return o.to(out_dtype), S


def delta_rule_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> DeltaOut:
    """Delta rule ``S_t = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``, ``o_t = S_tᵀ q_t · scale`` in chunked WY form.

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, beta ``[B, T, H]``, initial_state ``[B, H, K, V]`` (zeros when None);
    ``scale`` defaults to ``K ** -0.5``. Returns ``(o [B, T, H, V] in v's dtype, final state [B, H, K, V] fp32)``.
    """
    return _chunked(q, k, v, beta, None, scale, initial_state, chunk_size)


def gated_delta_rule_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> DeltaOut:
    """Gated delta rule ``S_t = exp(g_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ`` in chunked WY form.

    As :func:`delta_rule_reference`, plus ``g [B, T, H]``, the log of the per-head decay ``α_t`` (``g <= 0``).
    """
    return _chunked(q, k, v, beta, g, scale, initial_state, chunk_size)


# -- naive loop oracles -------------------------------------------------------------------------------------------
def _naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    scale: float | None,
    initial_state: torch.Tensor | None,
) -> DeltaOut:
    """The recurrence one token at a time, in fp32 (fp64 for fp64 inputs)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    work = torch.promote_types(v.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v, beta = (x.to(work) for x in (q, k, v, beta))
    S = torch.zeros(B, H, K, V, dtype=work, device=q.device) if initial_state is None else initial_state.to(work)
    eye = torch.eye(K, dtype=work, device=q.device)
    outs = []
    for t in range(T):
        k_t, b_t = k[:, t], beta[:, t, :, None, None]  # (B, H, K), (B, H, 1, 1)
        erase = eye - b_t * k_t[..., :, None] * k_t[..., None, :]  # I - β k kᵀ, (B, H, K, K)
        if g is not None:
            erase = erase * g[:, t].to(work).exp()[..., None, None]
        S = erase @ S + b_t * k_t[..., :, None] * v[:, t, :, None, :]
        outs.append((S * (scale * q[:, t, :, :, None])).sum(-2))  # Sᵀ q, (B, H, V)
    return torch.stack(outs, 1).to(v.dtype), S.to(torch.promote_types(work, torch.float32))


def delta_rule_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> DeltaOut:
    """Test oracle: the delta rule one token at a time (``chunk_size`` is ignored)."""
    return _naive(q, k, v, beta, None, scale, initial_state)


def gated_delta_rule_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> DeltaOut:
    """Test oracle: the gated delta rule one token at a time (``chunk_size`` is ignored)."""
    return _naive(q, k, v, beta, g, scale, initial_state)


delta_rule = Op("delta_rule", delta_rule_reference, naive=delta_rule_naive, check=check_delta_rule)
gated_delta_rule = Op(
    "gated_delta_rule", gated_delta_rule_reference, naive=gated_delta_rule_naive, check=check_gated_delta_rule
)
