"""Causal linear attention with a decaying matrix state: scalar decay per head, or a vector decay per key channel.

Per head, with state ``S ∈ R^{K×V}`` (fp32), query/key ``q_t, k_t ∈ R^K``, value ``v_t ∈ R^V`` and a log-decay ``g_t``
(``α_t = exp(g_t)``, ``g_t <= 0``), the recurrence and read-out are::

    S_t = α_t S_{t-1} + k_t v_tᵀ                 o_t = S_tᵀ (scale · q_t)        (the state after the write is read)

* :data:`linear_attention` -- ``α_t`` a **scalar** per head and step, ``g [B, T, H]`` (or ``None``: no decay): RetNet's
  retention with a fixed ``γ`` per head (Sun et al. 2023, arXiv:2307.08621, eqs. 1-6), lightning attention's fixed
  decay (Qin et al. 2024, arXiv:2401.04658), and the data-dependent scalar gate of "simple GLA" / Mamba-2-style
  gating (Yang et al. 2023, arXiv:2312.06635, §4.4 "GLA with a scalar gate"); without decay it is the linear
  transformer's ``φ(q)ᵀ Σ φ(k) vᵀ`` (Katharopoulos et al. 2020, arXiv:2006.16236, eq. 5, numerator).
* :data:`gated_linear_attention` -- ``α_t`` a **vector** over the K key channels, ``S_t = diag(α_t) S_{t-1} + k_t
  v_tᵀ``, ``g [B, T, H, K]``: GLA (Yang et al. 2023, eq. 3 with ``G_t = α_tᵀ 1``), HGRN-2 (Qin et al. 2024,
  arXiv:2404.07904, whose forget gate is the key's complement) and GSA (Zhang et al. 2024, arXiv:2409.07146).

Three equivalent forms of each, all taking an initial state and returning the final one:

* **chunked** (the training path; GLA §4.2, eqs. 4-5; RetNet eq. 7): the sequence is cut in chunks of ``C`` steps;
  with ``b_i = Σ_{s<=i} g_s`` the cumulative log-decay inside a chunk (a vector for GLA) and ``S₀`` the state
  entering it, every output of the chunk is

      o_i = (q_i ⊙ e^{b_i})ᵀ S₀ + Σ_{j<=i} Σ_c q_ic k_jc e^{b_ic - b_jc} v_j                      (inter + intra)

  and the state leaving it is ``S = diag(e^{b_C}) S₀ + Σ_j (k_j ⊙ e^{b_C - b_j}) v_jᵀ``. Every exponent is ``<= 0``
  except ``b_ic - b_jc`` above the diagonal, which is masked before ``exp``. All chunks' intra-chunk products are
  computed at once; the hand-over of ``S`` between chunks is the first-order recurrence
  ``S_n = diag(e^{b_C}) S_{n-1} + ΔS_n`` run by :func:`edifice.ops.linear_recurrence` (no Python loop over time).
  With a vector decay the intra-chunk scores cannot be one matrix product (the decay depends on the channel ``c``);
  as in GLA §4.3 ("secondary-level chunking") the chunk is cut again into sub-chunks of ``c = gcd(C, 16)`` steps.
  Scores between different sub-chunks factor through the cumulative decay at the start of the query's sub-chunk,
  ``r``: ``e^{b_i - b_j} = e^{b_i - r} · e^{r - b_j}``, both factors ``<= 1``, so they are matrix products of
  rescaled queries and keys; only the ``c × c`` diagonal blocks form the full ``[c, c, K]`` decay tensor. Memory is
  ``O(T · (C/c + c) · K)`` per head, linear in ``T``.
* **recurrent** (the decoding path, and the op's choice for a single position): the recurrence step by step.
* **parallel** (the checking form; RetNet eq. 5): the quadratic masked "attention" ``O = (Q Kᵀ ⊙ D) V`` with the
  decay mask ``D_ij = e^{b_i - b_j}`` (per channel for a vector decay) from stable segment sums, plus the decayed read
  of the initial state.

``linear_attention``/``gated_linear_attention`` are ops (a kernel may override them); their ``.naive`` is the token loop
used as a test oracle. Cumulative sums, decays, products and the state compute in fp32 (fp64 for fp64 inputs); ``o``
comes back in ``v``'s dtype.

Layout (flash-linear-attention's): q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]`` (scalar) or
``[B, T, H, K]`` (vector), initial and final state ``[B, H, K, V]``. Every function returns ``(o [B, T, H, V],
final_state [B, H, K, V])``. Legend: ``N`` chunks of ``C`` steps, ``P`` sub-chunks of ``c`` steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edifice.dtypes import compute_dtype
from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op
from edifice.ops.recurrence import linear_recurrence
from edifice.ops.ssd import segsum

__all__ = [
    "CHUNK",
    "SUB_CHUNK",
    "check_gated_linear_attention",
    "check_linear_attention",
    "gated_linear_attention",
    "gated_linear_attention_naive",
    "gated_linear_attention_parallel",
    "gated_linear_attention_recurrent",
    "gated_linear_attention_reference",
    "linear_attention",
    "linear_attention_naive",
    "linear_attention_parallel",
    "linear_attention_recurrent",
    "linear_attention_reference",
]

#: Default steps per chunk of the chunked form (flash-linear-attention's choice).
CHUNK = 64
#: Largest sub-chunk of the vector-decay form (GLA §4.3 uses 16); the sub-chunk is ``gcd(chunk_size, SUB_CHUNK)``.
SUB_CHUNK = 16

AttentionOut = tuple[torch.Tensor, torch.Tensor]


# -- argument checks ----------------------------------------------------------------------------------------------
def _check(
    op: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    vector: bool,
    scale: float | None,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> None:
    """Shared layout checks of both ops; every message names the expected shape."""
    expect_rank(op, "q", q, 4, "[B, T, H, K]")
    B, T, H, K = q.shape
    expect_rank(op, "k", k, 4, "[B, T, H, K]")
    expect_rank(op, "v", v, 4, "[B, T, H, V]")
    expect_floating(op, q=q, k=k, v=v, g=g, initial_state=initial_state)
    if tuple(k.shape) != (B, T, H, K):
        raise ValueError(f"{op}: k must be [B, T, H, K] = {fmt_shape(q.shape)} like q, got {fmt_shape(k.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(
            f"{op}: v must be [B, T, H, V] with [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(v.shape)}"
        )
    if g is not None:
        layout, want = ("[B, T, H, K]", (B, T, H, K)) if vector else ("[B, T, H]", (B, T, H))
        expect_rank(op, "g", g, len(want), layout)
        if tuple(g.shape) != want:
            raise ValueError(f"{op}: g must be {layout} = {fmt_shape(want)}, got {fmt_shape(g.shape)}")
    if initial_state is not None:
        want_state = (B, H, K, v.shape[-1])
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != want_state:
            got = fmt_shape(initial_state.shape) if isinstance(initial_state, torch.Tensor) else "a non-tensor"
            raise ValueError(f"{op}: initial_state must be [B, H, K, V] = {fmt_shape(want_state)}, got {got}")
    if scale is not None and not (isinstance(scale, int | float) and not isinstance(scale, bool) and scale > 0):
        raise ValueError(f"{op}: scale must be a positive number or None (K ** -0.5), got {scale!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")


def check_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    _check("linear_attention", q, k, v, g, False, scale, initial_state, chunk_size)


def check_gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    if not isinstance(g, torch.Tensor):
        raise TypeError(
            f"gated_linear_attention: g must be a tensor [B, T, H, K] of log-decays, got {type(g).__name__}"
        )
    _check("gated_linear_attention", q, k, v, g, True, scale, initial_state, chunk_size)


# -- shared pieces ------------------------------------------------------------------------------------------------
def _prepare(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    scale: float | None,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head-major working copies ``q·scale, k, v`` ``(B, H, T, *)``, the log-decay ``(B, H, T[, K])`` and ``S₀``."""
    B, T, H, K = q.shape
    work = compute_dtype(q, k, v)
    q, k, v = (x.to(work).transpose(1, 2) for x in (q, k, v))
    q = q * (K**-0.5 if scale is None else scale)
    log_decay = q.new_zeros(B, H, T) if g is None else g.to(work).transpose(1, 2)  # (B, H, T) or (B, H, T, K)
    S0 = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(work)
    return q, k, v, log_decay, S0


def _channels(decay: torch.Tensor, vector: bool) -> torch.Tensor:
    """A per-position decay ``(..., T)`` or ``(..., T, K)`` broadcast against ``(..., T, K)`` features."""
    return decay if vector else decay[..., None]


def _recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, S: torch.Tensor, vector: bool
) -> AttentionOut:
    """The recurrence step by step on head-major working tensors (scale folded into ``q``); returns ``(o, S)``."""
    outs = []
    for t in range(q.shape[2]):
        alpha = _channels(g[:, :, t].exp(), vector)[..., None]  # (B, H, K|1, 1)
        S = alpha * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, K, V)
        outs.append((q[:, :, t, None, :] @ S).squeeze(-2))  # Sᵀ q, (B, H, V)
    return torch.stack(outs, 2), S


def _parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, S0: torch.Tensor, vector: bool
) -> AttentionOut:
    """The quadratic masked form on head-major working tensors; returns ``(o, final state)``."""
    if vector:
        decay = segsum(g.transpose(-1, -2)).exp()  # (B, H, K, T, T): D_ij per channel, 0 above the diagonal
        scores = torch.einsum("bhik,bhjk,bhkij->bhij", q, k, decay)
    else:
        scores = q @ k.transpose(-1, -2) * segsum(g).exp()  # (B, H, T, T): (Q Kᵀ ⊙ D)
    cum = g.cumsum(2)  # (B, H, T[, K]): log-decay from the start to each position, inclusive
    o = scores @ v + (q * _channels(cum.exp(), vector)) @ S0
    to_end = _channels((cum[:, :, -1:] - cum).exp(), vector)  # each key's decay to the last position
    final = _channels(cum[:, :, -1].exp(), vector)[..., None] * S0 + (k * to_end).transpose(-1, -2) @ v
    return o, final


def _intra_vector(
    q: torch.Tensor, k: torch.Tensor, b: torch.Tensor, *, b_q: torch.Tensor | None = None, strict: bool = False
) -> torch.Tensor:
    """Intra-chunk scores ``A_ij = Σ_c q_ic k_jc e^{b_ic - b_jc}`` (``j <= i``) by secondary chunking (module doc).

    q, k, b ``(B, H, N, C, K)`` with ``b`` the in-chunk cumulative log-decay -> ``(B, H, N, C, C)``. The generalized
    delta rule also needs ``A_ij = Σ_c q_ic k_jc e^{b_q,ic - b_jc}`` for ``j < i`` (``strict``) with a query-side
    cumulative ``b_q`` (its exclusive one, ``b - g``); every exponent stays ``<= 0`` when ``b_q,i <= b_j`` there.
    """
    *lead, C, K = q.shape
    c = math.gcd(C, SUB_CHUNK)
    P = C // c
    bq = b if b_q is None else b_q
    qs, ks, bs, bqs = (x.reshape(*lead, P, c, K) for x in (q, k, b, bq))  # (B, H, N, P, c, K)
    # Inside a sub-chunk: the full [c, c, K] decay tensor, masked above (or on) the diagonal before exp.
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1 if strict else 0)
    diag_decay = (bqs[..., :, None, :] - bs[..., None, :, :]).masked_fill(~causal[..., None], -math.inf).exp()
    diag = torch.einsum("...ik,...jk,...ijk->...ij", qs, ks, diag_decay)  # (B, H, N, P, c, c)
    if P == 1:  # the chunk is one sub-chunk (C <= 16): nothing lies between sub-chunks
        return diag.reshape(*lead, C, C)
    ref = bqs[..., :1, :]  # (B, H, N, P, 1, K): query-side cumulative log-decay at each sub-chunk's first step
    # Between sub-chunks: query i of sub-chunk p and key j of an earlier sub-chunk, e^{b_i - r_p} · e^{r_p - b_j}.
    earlier = torch.arange(C, device=q.device)[None, :] < (torch.arange(P, device=q.device) * c)[:, None]  # (P, C)
    k_exp = (ref - b.unsqueeze(-3)).masked_fill(~earlier[..., None], -math.inf)  # (B, H, N, P, C, K), <= 0 kept
    inter = torch.einsum("...pik,...pjk->...pij", qs * (bqs - ref).exp(), k.unsqueeze(-3) * k_exp.exp())
    # Put each diagonal block into its sub-chunk's columns: (P, c, P, c) block-diagonal, then (C, C).
    eye = torch.eye(P, dtype=q.dtype, device=q.device)
    block = torch.einsum("...pij,pr->...pirj", diag, eye).reshape(*lead, P, c, C)
    return (inter + block).reshape(*lead, C, C)


def _chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    S0: torch.Tensor,
    vector: bool,
    chunk_size: int,
    decays: bool = True,
) -> AttentionOut:
    """The chunked form (module doc) on head-major working tensors; returns ``(o, final state)``.

    ``decays=False`` (no decay given): the hand-over is a plain cumulative sum of the chunks' writes.
    """
    B, H, T, _ = q.shape
    V = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T

    def chunks(x: torch.Tensor) -> torch.Tensor:
        # (B, H, T, *) -> (B, H, N, C, *); padded steps have q = k = v = 0 and g = 0: identity updates, no output.
        x = F.pad(x, [0, 0] * (x.dim() - 3) + [0, pad])
        return x.reshape(B, H, N, C, *x.shape[3:])

    qc, kc, vc = chunks(q), chunks(k), chunks(v)  # (B, H, N, C, K|V)
    b = chunks(g).cumsum(3)  # (B, H, N, C[, K]): in-chunk cumulative log-decay b_i
    b_end = b[:, :, :, -1:]  # (B, H, N, 1[, K])
    if vector:
        attn = _intra_vector(qc, kc, b)
    else:
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        decay = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, -math.inf).exp()  # (B, H, N, C, C)
        attn = qc @ kc.transpose(-1, -2) * decay
    q_in = qc * _channels(b.exp(), vector)  # what each query reads of the state entering its chunk
    k_out = kc * _channels((b_end - b).exp(), vector)  # each key's decay to its chunk's end
    writes = k_out.transpose(-1, -2) @ vc  # (B, H, N, K, V): ΔS_n, the chunk's own contribution to its end state
    chunk_decay = _channels(b_end.squeeze(3).exp(), vector)[..., None]  # (B, H, N, K|1, 1)
    # Hand-over S_n = diag(e^{b_C}) S_{n-1} + ΔS_n as a linear recurrence over chunks (time on dim 1).
    if decays:
        ends = linear_recurrence(chunk_decay.transpose(1, 2), writes.transpose(1, 2), S0).transpose(1, 2)
    else:  # S_n = S_{n-1} + ΔS_n
        ends = S0[:, :, None] + writes.cumsum(2)
    starts = torch.cat([S0[:, :, None], ends[:, :, :-1]], 2)  # (B, H, N, K, V): the state entering each chunk
    o = q_in @ starts + attn @ vc  # (B, H, N, C, V)
    return o.reshape(B, H, N * C, V)[:, :, :T], ends[:, :, -1]


def _finish(o: torch.Tensor, S: torch.Tensor, v: torch.Tensor) -> AttentionOut:
    """Back to the time-major layout in ``v``'s dtype; the state stays in the working precision."""
    return o.transpose(1, 2).to(v.dtype), S


# -- scalar decay -------------------------------------------------------------------------------------------------
def linear_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> AttentionOut:
    """``S_t = e^{g_t} S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t · scale`` in chunked form (one position: recurrent).

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]`` log-decays ``<= 0`` (None: no decay), initial_state
    ``[B, H, K, V]`` (zeros when None); ``scale`` defaults to ``K ** -0.5``. Returns ``(o [B, T, H, V] in v's dtype,
    final state [B, H, K, V] fp32)``.
    """
    q, k, v_, g_, S0 = _prepare(q, k, v, g, scale, initial_state)
    if q.shape[2] == 1:
        return _finish(*_recurrent(q, k, v_, g_, S0, False), v)
    return _finish(*_chunked(q, k, v_, g_, S0, False, chunk_size, decays=g is not None), v)


def linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> AttentionOut:
    """:func:`linear_attention_reference` one position at a time (the decoding form; ``chunk_size`` is ignored)."""
    q, k, v_, g_, S0 = _prepare(q, k, v, g, scale, initial_state)
    return _finish(*_recurrent(q, k, v_, g_, S0, False), v)


def linear_attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> AttentionOut:
    """:func:`linear_attention_reference` as one masked ``T × T`` product (the checking form; O(T²) memory)."""
    q, k, v_, g_, S0 = _prepare(q, k, v, g, scale, initial_state)
    return _finish(*_parallel(q, k, v_, g_, S0, False), v)


def linear_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> AttentionOut:
    """Test oracle: the recurrence one token at a time, written out per element (``chunk_size`` is ignored)."""
    return _naive(q, k, v, g, False, scale, initial_state)


# -- vector decay -------------------------------------------------------------------------------------------------
def gated_linear_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> AttentionOut:
    """``S_t = diag(e^{g_t}) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t · scale`` in chunked form (one position: recurrent).

    As :func:`linear_attention_reference` with ``g [B, T, H, K]``, a log-decay ``<= 0`` per key channel.
    """
    q, k, v_, g_, S0 = _prepare(q, k, v, g, scale, initial_state)
    if q.shape[2] == 1:
        return _finish(*_recurrent(q, k, v_, g_, S0, True), v)
    return _finish(*_chunked(q, k, v_, g_, S0, True, chunk_size), v)


def gated_linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> AttentionOut:
    """:func:`gated_linear_attention_reference` one position at a time (``chunk_size`` is ignored)."""
    q, k, v_, g_, S0 = _prepare(q, k, v, g, scale, initial_state)
    return _finish(*_recurrent(q, k, v_, g_, S0, True), v)


def gated_linear_attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> AttentionOut:
    """:func:`gated_linear_attention_reference` as one masked product with a ``[K, T, T]`` decay per head (checking)."""
    q, k, v_, g_, S0 = _prepare(q, k, v, g, scale, initial_state)
    return _finish(*_parallel(q, k, v_, g_, S0, True), v)


def gated_linear_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK,
) -> AttentionOut:
    """Test oracle: the recurrence one token at a time, written out per element (``chunk_size`` is ignored)."""
    return _naive(q, k, v, g, True, scale, initial_state)


# -- naive loop oracle --------------------------------------------------------------------------------------------
def _naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    vector: bool,
    scale: float | None,
    initial_state: torch.Tensor | None,
) -> AttentionOut:
    """The recurrence token by token in fp32 (fp64 for fp64 inputs), time-major, as the papers write it."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    work = compute_dtype(q, k, v)
    scale = K**-0.5 if scale is None else scale
    q, k, v = (x.to(work) for x in (q, k, v))
    S = torch.zeros(B, H, K, V, dtype=work, device=q.device) if initial_state is None else initial_state.to(work)
    outs = []
    for t in range(T):
        if g is not None:
            alpha = g[:, t].to(work).exp()  # (B, H) or (B, H, K)
            S = S * (alpha[..., :, None] if vector else alpha[..., None, None])
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        outs.append(torch.einsum("bhk,bhkv->bhv", scale * q[:, t], S))
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, H, V)
    return o.to(v.dtype), S


linear_attention = Op(
    "linear_attention", linear_attention_reference, naive=linear_attention_naive, check=check_linear_attention
)
gated_linear_attention = Op(
    "gated_linear_attention",
    gated_linear_attention_reference,
    naive=gated_linear_attention_naive,
    check=check_gated_linear_attention,
)
