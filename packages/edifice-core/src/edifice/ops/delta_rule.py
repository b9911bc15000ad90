"""The delta rule, the gated delta rule and the generalized delta rule: a matrix state corrected at each step.

With a state ``S ∈ R^{K×V}`` per head (fp32), key ``k_t`` (L2-normalised by the caller), value ``v_t``, write
strength ``β_t ∈ (0, 2)`` and, for the gated rule, a log-decay ``g_t <= 0`` (``α_t = exp(g_t)``):

* delta rule (Schlag et al. 2021, arXiv:2102.11174; Yang et al. 2024, arXiv:2406.06484, eq. 1):
  ``S_t = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``, i.e. ``S_{t-1}`` is moved toward ``v_t`` at ``k_t``;
* gated delta rule (Yang, Kautz & Hatamizadeh 2024, arXiv:2412.06464, eq. 10):
  ``S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``;
* generalized delta rule, a diagonal-plus-low-rank transition (RWKV-7, Peng et al. 2025, arXiv:2503.14456, §4
  ``wkv_t = wkv_{t-1}(diag(w_t) - κ̂_tᵀ(a_t ⊙ κ̂_t)) + v_tᵀ k̃_t`` transposed; flash-linear-attention's "DPLR" rule):
  ``S_t = (diag(e^{g_t}) + b_t a_tᵀ) S_{t-1} + k_t v_tᵀ`` with a decay ``e^{g_t}`` per key channel and free removal
  vectors ``a_t``, ``b_t`` (RWKV-7: ``a = -κ̂``, ``b = κ̂ ⊙ a``; Kimi Delta Attention: ``a = -e^{g} ⊙ k``,
  ``b = β k``). The delta rules are its special case ``g`` scalar, ``a = -e^{g} k``, ``b = β k``, written key ``β k``,
  and run through the same chunked code;
* output ``o_t = S_tᵀ (scale · q_t)`` (the state after the update is read).

The reference is the chunked WY form (Yang et al. 2024 §3.2-3.3, eqs. 6-9; Gated DeltaNet §3.3, eqs. 11-12;
generalized to the DPLR transition as fla's ``chunk_dplr_delta_rule``). Inside a chunk of ``C`` steps with in-chunk
cumulative log-decay ``γ_r = Σ_{s<=r} g_s`` (per channel), its exclusive ``γ⁻_r = γ_r - g_r``, and ``S₀`` the state
entering the chunk, the removal read-outs ``u_t = a_tᵀ S_{t-1}`` satisfy

    u_t = (a_t ⊙ e^{γ⁻_t})ᵀ S₀ + Σ_{j<t} [A_ak]_tj v_j + [A_ab]_tj u_j,   [A_xy]_tj = Σ_c x_tc y_jc e^{γ⁻_tc - γ_jc},

a unit lower-triangular system ``(I - A_ab) U = A_ak V + (a ⊙ e^{γ⁻}) S₀`` (the UT transform, eq. 8), solved once for
all chunks as ``U = Ũ + W S₀``; then every output of the chunk is ``O = (Q ⊙ e^{γ}) S₀ + A_qk V + A_qb U`` (scores
with ``e^{γ_t - γ_j}``, ``j <= t``) and the state leaving it ``S = diag(e^{γ_C}) S₀ + (K ⊙ e^{γ_C - γ})ᵀ V + (B ⊙
e^{γ_C - γ})ᵀ U``. Every exponent is ``<= 0``. All chunks' ``Ũ``, ``W`` and intra-chunk scores are computed at once
(per-channel scores by the secondary chunking of :mod:`edifice.ops.linear_attention`); only the ``C``-step hand-over
of ``S`` loops over chunks. The triangular system is solved with ``torch.linalg.solve_triangular`` (differentiable),
not by the per-row substitution loop of the Triton kernels. A single position takes the recurrent form.

Layout (flash-linear-attention's): q, k, a, b ``[B, T, H, K]``, v ``[B, T, H, V]``, beta ``[B, T, H]``, g ``[B, T,
H]`` (gated rule) or ``[B, T, H, K]`` (generalized rule), initial_state and final state ``[B, H, K, V]`` (fp32; the
oracles compute in fp64 for fp64 inputs). Every op returns ``(o [B, T, H, V] in v's dtype, final_state)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edifice.dtypes import compute_dtype
from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op
from edifice.ops.linear_attention import _intra_vector

__all__ = [
    "CHUNK",
    "check_delta_rule",
    "check_gated_delta_rule",
    "check_generalized_delta_rule",
    "delta_rule",
    "delta_rule_naive",
    "delta_rule_reference",
    "gated_delta_rule",
    "gated_delta_rule_naive",
    "gated_delta_rule_reference",
    "generalized_delta_rule",
    "generalized_delta_rule_naive",
    "generalized_delta_rule_recurrent",
    "generalized_delta_rule_reference",
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
    per_step: dict[str, torch.Tensor | None],
    per_channel: dict[str, torch.Tensor],
    scale: float | None,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> None:
    """Shared layout checks of the ops; ``per_step`` are ``[B, T, H]``, ``per_channel`` ``[B, T, H, K]`` like k."""
    expect_rank(op, "q", q, 4, "[B, T, H, K]")
    B, T, H, K = q.shape
    expect_rank(op, "k", k, 4, "[B, T, H, K]")
    expect_rank(op, "v", v, 4, "[B, T, H, V]")
    expect_floating(op, q=q, k=k, v=v, initial_state=initial_state, **per_step, **per_channel)
    for name, x in {"k": k, **per_channel}.items():
        expect_rank(op, name, x, 4, "[B, T, H, K]")
        if tuple(x.shape) != (B, T, H, K):
            raise ValueError(
                f"{op}: {name} must be [B, T, H, K] = {fmt_shape(q.shape)} like q, got {fmt_shape(x.shape)}"
            )
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(
            f"{op}: v must be [B, T, H, V] with [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(v.shape)}"
        )
    for name, step in per_step.items():
        if step is None:
            continue
        expect_rank(op, name, step, 3, "[B, T, H]")
        if tuple(step.shape) != (B, T, H):
            raise ValueError(f"{op}: {name} must be [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(step.shape)}")
    if initial_state is not None:
        want = (B, H, K, v.shape[-1])
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != want:
            got = fmt_shape(initial_state.shape) if isinstance(initial_state, torch.Tensor) else "a non-tensor"
            raise ValueError(f"{op}: initial_state must be [B, H, K, V] = {fmt_shape(want)}, got {got}")
    if scale is not None and not (isinstance(scale, int | float) and not isinstance(scale, bool) and scale > 0):
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
    _check("delta_rule", q, k, v, {"beta": beta}, {}, scale, initial_state, chunk_size)


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
    _check("gated_delta_rule", q, k, v, {"beta": beta, "g": g}, {}, scale, initial_state, chunk_size)


def check_generalized_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    for name, x in (("a", a), ("b", b), ("g", g)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"generalized_delta_rule: {name} must be a tensor [B, T, H, K], got {type(x).__name__}")
    _check("generalized_delta_rule", q, k, v, {}, {"a": a, "b": b, "g": g}, scale, initial_state, chunk_size)


# -- chunked WY form (the reference) ------------------------------------------------------------------------------
def _chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> DeltaOut:
    """``S_t = (diag(e^{g_t}) + b_t a_tᵀ) S_{t-1} + k_t v_tᵀ`` in chunked WY form (module doc); ``g`` ``[B, T, H]``
    (one decay per head), ``[B, T, H, K]`` (per channel) or None (no decay). Returns (o in v's dtype, state)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    work = torch.float32  # the state and every product in fp32, whatever the inputs (the op's contract)
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    vector = g is not None and g.dim() == 4

    def chunks(x: torch.Tensor) -> torch.Tensor:
        # (B, T, H, *) -> (B, H, N, C, *) in the working precision; padded steps have k = v = a = b = g = 0: identity
        # updates that read nothing.
        x = x.to(work).transpose(1, 2)
        x = F.pad(x, [0, 0] * (x.dim() - 3) + [0, pad])
        return x.reshape(B, H, N, C, *x.shape[3:])

    qc, kc, vc, ac, bc = chunks(q) * scale, chunks(k), chunks(v), chunks(a), chunks(b)  # (B, H, N, C, K|V)
    g_c = chunks(g) if g is not None else qc.new_zeros(B, H, N, C)  # (B, H, N, C[, K])
    gamma = g_c.cumsum(3)  # γ_r, in-chunk cumulative log-decay (inclusive)
    gamma_ex = gamma - g_c  # γ⁻_r = γ_{r-1}: what the removal read-out u_r = a_rᵀ S_{r-1} sees
    if vector:
        # Two calls, each on the pair of keys (k, b) stacked on a leading dimension:
        # [A_qk]_tj = Σ_c q_tc k_jc e^{γ_tc - γ_jc} (j <= t) and [A_ak]_tj with e^{γ⁻_tc - γ_jc} (j < t).
        keys, decays = torch.stack([kc, bc]), torch.stack([gamma, gamma])
        a_qk, a_qb = _intra_vector(torch.stack([qc, qc]), keys, decays).unbind(0)
        a_ak, a_ab = _intra_vector(
            torch.stack([ac, ac]), keys, decays, b_q=torch.stack([gamma_ex, gamma_ex]), strict=True
        ).unbind(0)
    else:
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        # Decay masks, masked before exp so nothing overflows: e^{γ_t - γ_j} (j <= t) and e^{γ⁻_t - γ_j} (j < t).
        inclusive = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, -math.inf).exp()
        strict = (gamma_ex[..., :, None] - gamma[..., None, :]).masked_fill(~causal.tril(-1), -math.inf).exp()
        a_qk = qc @ kc.transpose(-1, -2) * inclusive
        a_qb = qc @ bc.transpose(-1, -2) * inclusive
        a_ak = ac @ kc.transpose(-1, -2) * strict
        a_ab = ac @ bc.transpose(-1, -2) * strict

    def per_channel(x: torch.Tensor) -> torch.Tensor:
        return x if vector else x[..., None]  # a per-head decay broadcast over the key channels

    # Eq. 8: the UT transform (I - A_ab)⁻¹, applied by a unit-triangular solve to [A_ak V | a ⊙ e^{γ⁻}].
    system = torch.eye(C, dtype=work, device=q.device) - a_ab
    rhs = torch.cat([a_ak @ vc, ac * per_channel(gamma_ex.exp())], -1)  # (B, H, N, C, V + K)
    solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    u, w = solved[..., :V], solved[..., V:]  # U = Ũ + W S₀ with Ũ (B, H, N, C, V) and W (B, H, N, C, K)
    o_intra = a_qk @ vc  # (B, H, N, C, V): the chunk's own writes as read by its queries
    q_in = qc * per_channel(gamma.exp())  # what each query reads of the state entering its chunk
    to_end = per_channel((gamma[:, :, :, -1:] - gamma).exp())  # each step's decay to its chunk's end
    k_out, b_out = kc * to_end, bc * to_end
    writes = k_out.transpose(-1, -2) @ vc  # (B, H, N, K, V)
    chunk_decay = per_channel(gamma[:, :, :, -1].exp())[..., None]  # (B, H, N, K|1, 1)

    S = q.new_zeros(B, H, K, V, dtype=work) if initial_state is None else initial_state.to(work)
    outs = []
    for n in range(N):  # hand the (K×V) state from chunk to chunk; everything inside a chunk is batched
        u_n = u[:, :, n] + w[:, :, n] @ S  # eq. 9: the removal read-outs given the entering state, (B, H, C, V)
        outs.append(q_in[:, :, n] @ S + o_intra[:, :, n] + a_qb[:, :, n] @ u_n)
        S = chunk_decay[:, :, n] * S + writes[:, :, n] + b_out[:, :, n].transpose(-1, -2) @ u_n
    o = torch.stack(outs, 2).reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)  # (B, T, H, V)
    return o.to(v.dtype), S


def _recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
) -> DeltaOut:
    """The generalized rule one step at a time on whole ``[K, V]`` states (the decoding form)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    work, out_dtype = torch.float32, v.dtype
    q, k, v, a, b, g = (x.to(work) for x in (q, k, v, a, b, g))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(work)
    outs = []
    for t in range(T):
        removed = a[:, t, :, None, :] @ S  # a_tᵀ S_{t-1}, (B, H, 1, V)
        S = g[:, t, :, :, None].exp() * S + b[:, t, :, :, None] * removed + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append((scale * q[:, t, :, None, :] @ S).squeeze(-2))  # Sᵀ q, (B, H, V)
    return torch.stack(outs, 1).to(out_dtype), S  # o in the caller's v dtype, as the chunked form returns it


def _delta_as_generalized(
    k: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (gated) delta rule's ``α(I - β k kᵀ) S + β k vᵀ`` as the generalized transition: ``(β k, a, b)`` with
    ``a = -α k``, ``b = β k`` (``α`` a scalar per head, so it stays outside the per-channel decay)."""
    k = k.float()
    k_beta = k * beta.float()[..., None]
    a = -k if g is None else -k * g.float().exp()[..., None]
    return k_beta, a, k_beta


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
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k_beta, a, b = _delta_as_generalized(k, beta, None)
    return _chunked(q, k_beta, v, a, b, None, scale, initial_state, chunk_size)


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
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k_beta, a, b = _delta_as_generalized(k, beta, g)
    return _chunked(q, k_beta, v, a, b, g, scale, initial_state, chunk_size)


def generalized_delta_rule_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> DeltaOut:
    """``S_t = (diag(e^{g_t}) + b_t a_tᵀ) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t · scale`` in chunked WY form.

    q, k, a, b and the log-decay ``g <= 0`` ``[B, T, H, K]``, v ``[B, T, H, V]``, initial_state ``[B, H, K, V]``
    (zeros when None); ``scale`` defaults to ``K ** -0.5`` (RWKV-7 uses 1). One position takes the recurrent form.
    Returns ``(o [B, T, H, V] in v's dtype, final state [B, H, K, V] fp32)``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.shape[1] == 1:
        return _recurrent(q, k, v, a, b, g, scale, initial_state)
    return _chunked(q, k, v, a, b, g, scale, initial_state, chunk_size)


def generalized_delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> DeltaOut:
    """:func:`generalized_delta_rule_reference` one position at a time (the decoding form; ``chunk_size`` ignored)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _recurrent(q, k, v, a, b, g, scale, initial_state)


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


def generalized_delta_rule_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> DeltaOut:
    """Test oracle: RWKV-7's state update token by token in its own layout, the state ``wkv = Sᵀ`` ``[V, K]``:
    ``wkv_t = wkv_{t-1} (diag(w_t) + a_t b_tᵀ) + v_t k_tᵀ``, ``o_t = wkv_t q_t · scale`` (``chunk_size`` ignored)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    work = compute_dtype(q, k, v, a, b)
    scale = K**-0.5 if scale is None else scale
    q, k, v, a, b, g = (x.to(work) for x in (q, k, v, a, b, g))
    wkv = q.new_zeros(B, H, V, K) if initial_state is None else initial_state.to(work).transpose(-1, -2)
    outs = []
    for t in range(T):
        transition = torch.diag_embed(g[:, t].exp()) + a[:, t, :, :, None] * b[:, t, :, None, :]  # (B, H, K, K)
        wkv = wkv @ transition + v[:, t, :, :, None] * k[:, t, :, None, :]
        outs.append(torch.einsum("bhvk,bhk->bhv", wkv, scale * q[:, t]))
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, H, V)
    return o.to(v.dtype), wkv.transpose(-1, -2)


delta_rule = Op("delta_rule", delta_rule_reference, naive=delta_rule_naive, check=check_delta_rule)
gated_delta_rule = Op(
    "gated_delta_rule", gated_delta_rule_reference, naive=gated_delta_rule_naive, check=check_gated_delta_rule
)
generalized_delta_rule = Op(
    "generalized_delta_rule",
    generalized_delta_rule_reference,
    naive=generalized_delta_rule_naive,
    check=check_generalized_delta_rule,
)
