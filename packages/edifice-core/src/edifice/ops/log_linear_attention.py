"""Log-linear attention: a Fenwick-tree partition of the prefix into O(log T) buckets, each with its own weight λ.

Guo, Yang, Goel, Xing, Dao & Kim (2025), "Log-Linear Attention", https://arxiv.org/abs/2506.04761. Per head, with a
scalar log-decay ``g_t <= 0`` (Mamba-2's ``A Δ_t``), cumulative ``b_t = Σ_{s<=t} g_s``, query/key ``q_t, k_t ∈ R^K``,
value ``v_t ∈ R^V`` and per-level weights ``λ_t^ℓ >= 0`` (``ℓ = 0 .. L-1``), the paper's masked form (§3, eq. 7,
``O = (Q Kᵀ ⊙ M^S ⊙ M^H) V``) is::

    o_i = scale · Σ_{j<=i} (q_i · k_j) e^{b_i - b_j} λ_i^{ℓ(i, j)} v_j,      ℓ(i, j) = min(bitlen(i XOR j), L - 1)

``ℓ(i, i) = 0`` (the token itself), and for ``j < i`` the level is one more than the highest bit where the absolute
positions differ: the keys of level ``ℓ >= 1`` are the aligned block of ``2^{ℓ-1}`` positions just before ``i``'s
own aligned ``2^{ℓ-1}`` block (present when bit ``ℓ-1`` of ``i`` is set) -- the Fenwick-tree decomposition of the
prefix (§3.1, Fig. 2), 0-indexed as in the authors' code (flash-linear-attention's ``naive_log_linear_attn``).
Levels past ``L - 1`` merge into the top level, so the state stays ``L`` matrices for any length.

**Recurrent form** (§3.2, the decoding path and :func:`log_linear_attention_naive`): the state after position ``i`` is
one matrix per level, ``S_i^ℓ = Σ_{j<=i, ℓ(i,j)=ℓ} e^{b_i - b_j} k_j v_jᵀ``. Moving to ``i + 1`` with
``d = ℓ(i+1, i)`` (one more than the number of trailing ones of ``i``): every level decays by ``e^{g_{i+1}}``, the
levels ``< d`` merge into level ``d`` (the Fenwick carry), and the new token fills level 0::

    S^d <- e^{g} Σ_{ℓ<=d} S^ℓ,   S^ℓ <- 0 (0 < ℓ < d),   S^ℓ <- e^{g} S^ℓ (ℓ > d),   S^0 <- k vᵀ
    o = scale · Σ_ℓ λ^ℓ (S^ℓ)ᵀ q

**Continuation** from a state at position ``i0`` (an initial state; the start of a chunk): its bucket ``ℓ`` reaches
query ``i > i0`` at level ``max(ℓ, ℓ(i, i0))`` (the buckets are nested: levels at or above the highest bit where
``i`` and ``i0`` differ are unchanged, the lower ones merge into it), decayed by ``e^{b_i - b_{i0}}``. A state before
the first position (``offset = 0``) sits at ``i0 = -1``, whose distance to every position is the top level.

**Chunked form** (:func:`log_linear_attention_reference`, the training path; §3.3): chunks of ``C = 2^c`` positions
aligned to absolute multiples of ``C`` (the segment is padded in front by ``offset mod C`` zero tokens). Inside a chunk
the levels ``ℓ(i, j) = bitlen((i mod C) XOR (j mod C))`` form one fixed ``C × C`` pattern, so the intra-chunk part is
the masked quadratic form. A key in an earlier chunk ``m`` reaches every query of chunk ``n`` through the Fenwick state
at the end of chunk ``n - 1``; keys of chunks ``m < n - 1`` all sit at the one level ``ℓ(end_{n-1}, start_m)``, so
those states are a chunk-level masked sum of the per-chunk states ``ΔS_m`` (``O(N² L K V)`` for ``N`` chunks, no loop
over time), plus the last chunk's own intra-chunk Fenwick state and the re-levelled initial state. The read of a
chunk's queries from those ``L`` states costs ``O(T L K V)``: ``O(T log T)`` overall, the paper's complexity.

Layout (flash-linear-attention's): q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]``, level_scales
``[B, T, H, L]``, state ``[B, H, L, K, V]``; ``offset`` is the absolute position of the first query (an int, or a
``[B]``/0-d int64 tensor; a tensor with ``T > 1`` is read on the host once). Every function returns ``(o [B, T, H, V],
final_state [B, H, L, K, V])``. Cumulative sums, decays and states compute in fp32 (fp64 for fp64 inputs); ``o`` has
``v``'s dtype.
"""

from __future__ import annotations

import torch

from edifice.dtypes import compute_dtype
from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op

__all__ = [
    "CHUNK",
    "check_log_linear_attention",
    "fenwick_level",
    "log_linear_attention",
    "log_linear_attention_masked",
    "log_linear_attention_naive",
    "log_linear_attention_recurrent",
    "log_linear_attention_reference",
]

_OP = "log_linear_attention"
#: Default positions per chunk of the chunked form (a power of two; the authors' kernels use 64).
CHUNK = 64

Out = tuple[torch.Tensor, torch.Tensor]


def fenwick_level(i: torch.Tensor, j: torch.Tensor, levels: int) -> torch.Tensor:
    """``ℓ(i, j) = min(bitlen(i XOR j), levels - 1)`` of int64 positions (broadcast); ``j = -1`` gives the top level."""
    x = torch.bitwise_xor(i, j)
    lvl = torch.zeros_like(x)
    for p in range(levels - 1):  # bitlen clamped at levels - 1: count the powers of two x reaches
        lvl = lvl + (x >= (1 << p)).long()
    return torch.where(x < 0, levels - 1, lvl)


def check_log_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    chunk_size: int = CHUNK,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    expect_rank(_OP, "q", q, 4, "[B, T, H, K]")
    B, T, H, K = q.shape
    expect_rank(_OP, "k", k, 4, "[B, T, H, K]")
    expect_rank(_OP, "v", v, 4, "[B, T, H, V]")
    expect_rank(_OP, "g", g, 3, "[B, T, H]")
    expect_rank(_OP, "level_scales", level_scales, 4, "[B, T, H, L]")
    expect_floating(_OP, q=q, k=k, v=v, g=g, level_scales=level_scales, initial_state=initial_state)
    if tuple(k.shape) != (B, T, H, K):
        raise ValueError(f"{_OP}: k must be [B, T, H, K] = {fmt_shape(q.shape)} like q, got {fmt_shape(k.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(
            f"{_OP}: v must be [B, T, H, V] with [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(v.shape)}"
        )
    if tuple(g.shape) != (B, T, H):
        raise ValueError(f"{_OP}: g must be [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(g.shape)}")
    L = level_scales.shape[-1]
    if tuple(level_scales.shape[:3]) != (B, T, H) or L < 1:
        raise ValueError(f"{_OP}: level_scales must be [B, T, H, L] with L >= 1, got {fmt_shape(level_scales.shape)}")
    if initial_state is not None:
        want = (B, H, L, K, v.shape[-1])
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != want:
            got = fmt_shape(initial_state.shape) if isinstance(initial_state, torch.Tensor) else "a non-tensor"
            raise ValueError(f"{_OP}: initial_state must be [B, H, L, K, V] = {fmt_shape(want)}, got {got}")
    if scale is not None and not (isinstance(scale, int | float) and not isinstance(scale, bool) and scale > 0):
        raise ValueError(f"{_OP}: scale must be a positive number or None (K ** -0.5), got {scale!r}")
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 1
        or chunk_size & (chunk_size - 1)
    ):
        raise ValueError(f"{_OP}: chunk_size must be a power of two, got {chunk_size!r}")
    if isinstance(offset, torch.Tensor):
        if offset.is_floating_point() or offset.dim() > 1 or (offset.dim() == 1 and offset.shape[0] != B):
            raise ValueError(
                f"{_OP}: offset must be an int or an int64 tensor [B] or [], "
                f"got {offset.dtype} {fmt_shape(offset.shape)}"
            )
    elif isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"{_OP}: offset must be a non-negative int or an int64 tensor, got {offset!r}")


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def _int_offset(offset: int | torch.Tensor) -> int:
    """The offset as a Python int (a tensor's rows must agree; this reads it on the host)."""
    if not isinstance(offset, torch.Tensor):
        return int(offset)
    first = int(offset.reshape(-1)[0])
    if offset.dim() == 1 and bool((offset != first).any()):
        raise ValueError(f"{_OP}: the chunked form needs one offset for every row, got {offset.tolist()}")
    return first


# -- recurrent form: the oracle and the decoding path ----------------------------------------------------------------
def log_linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    chunk_size: int = CHUNK,
) -> Out:
    """The Fenwick-state recurrence of the module doc, one position at a time (offsets may differ per row)."""
    B, T, H, K = q.shape
    V, L = v.shape[-1], level_scales.shape[-1]
    work = compute_dtype(q, k, v, g, level_scales)
    sc = _scale(q, scale)
    S = q.new_zeros(B, H, L, K, V, dtype=work) if initial_state is None else initial_state.to(work).clone()
    pos = torch.as_tensor(offset, device=q.device).long().expand(B)  # (B,) position of the next query
    levels = torch.arange(L, device=q.device)
    out = []
    for t in range(T):
        d = fenwick_level(pos + t, pos + t - 1, L)  # (B,) level of the previous position, seen from this one
        below = (levels[None, :] < d[:, None]).to(work)[:, None, :, None, None]  # (B, 1, L, 1, 1)
        carry = (S * below).sum(2, keepdim=True)  # the levels < d merge into level d
        onehot = (levels[None, :] == d[:, None]).to(work)[:, None, :, None, None]
        S = (S * (1 - below) + carry * onehot) * g[:, t].to(work).exp()[:, :, None, None, None]
        kv = k[:, t].to(work)[..., :, None] * v[:, t].to(work)[..., None, :]  # (B, H, K, V)
        S = S.clone()
        S[:, :, 0] = S[:, :, 0] + kv  # level 0 is empty after the carry (d >= 1)
        read = torch.einsum("bhk,bhlkv->bhlv", q[:, t].to(work) * sc, S)
        out.append(torch.einsum("bhl,bhlv->bhv", level_scales[:, t].to(work), read))
    return torch.stack(out, 1).to(v.dtype), S


def log_linear_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    chunk_size: int = CHUNK,
) -> Out:
    """Test oracle: the recurrent form (§3.2), a Python loop over time."""
    return log_linear_attention_recurrent(
        q, k, v, g, level_scales, scale=scale, initial_state=initial_state, offset=offset, chunk_size=chunk_size
    )


# -- the paper's masked (quadratic) form ----------------------------------------------------------------------------
def _relevel(state: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Bucket ``ℓ`` of ``state [B, H, L, K, V]`` moved to level ``max(ℓ, d)`` for each ``d`` of ``d [...]``.

    Returns ``[B, H, ..., L, K, V]`` (one re-levelled state per entry of ``d``).
    """
    L = state.shape[2]
    levels = torch.arange(L, device=state.device)
    target = torch.maximum(levels, d[..., None])  # (..., L): where bucket l goes
    move = (target[..., None, :] == levels[:, None]).to(state.dtype)  # (..., L_new, L_old)
    return torch.einsum("...al,bhlkv->bh...akv", move, state)


def log_linear_attention_masked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    chunk_size: int = CHUNK,
) -> Out:
    """The masked form ``O = (Q Kᵀ ⊙ M^S ⊙ M^H) V`` (eq. 7) over the whole segment, ``O(T²)``; a checking form."""
    B, T, H, _ = q.shape
    L = level_scales.shape[-1]
    work = compute_dtype(q, k, v, g, level_scales)
    off = _int_offset(offset)
    q, k, v, lam = (t.to(work) for t in (q, k, v, level_scales))
    pos = off + torch.arange(T, device=q.device)
    b = torch.cumsum(g.to(work), dim=1)  # (B, T, H)
    lvl = fenwick_level(pos[:, None], pos[None, :], L)  # (T, T)
    causal = pos[:, None] >= pos[None, :]
    diff = b[:, :, None, :] - b[:, None, :, :]  # (B, Ti, Tj, H)
    decay = torch.where(causal[None, :, :, None], diff, float("-inf")).exp()
    lam_ij = torch.gather(lam, 3, lvl[None, :, None, :].expand(B, T, H, T)).permute(0, 1, 3, 2)  # (B, Ti, Tj, H)
    scores = torch.einsum("bihk,bjhk->bijh", q, k) * decay * lam_ij * _scale(q, scale)
    o = torch.einsum("bijh,bjhv->bihv", scores, v)
    last = pos[-1:]
    key_lvl = fenwick_level(last, pos, L)  # (T,) levels of the keys seen from the last position
    w = (b[:, -1:, :] - b).exp()  # (B, T, H)
    onehot = (key_lvl[:, None] == torch.arange(L, device=q.device)).to(work)  # (T, L)
    final = torch.einsum("tl,bth,bthk,bthv->bhlkv", onehot, w, k, v)
    if initial_state is not None:
        S0 = initial_state.to(work)
        i0 = torch.tensor(off - 1, device=q.device)
        moved = _relevel(S0, fenwick_level(pos, i0, L))  # (B, H, T, L, K, V)
        read = torch.einsum("bhtlkv,bthk->bthlv", moved, q * _scale(q, scale))
        o = o + torch.einsum("bthlv,bthl,bth->bthv", read, lam, b.exp())
        final = final + _relevel(S0, fenwick_level(last, i0, L))[:, :, 0] * b[:, -1, :, None, None, None].exp()
    return o.to(v.dtype), final


# -- chunked form: the vectorised reference --------------------------------------------------------------------------
def log_linear_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    chunk_size: int = CHUNK,
) -> Out:
    """The chunked form of the module doc (no loop over time); one position with a tensor offset runs the recurrence."""
    if q.shape[1] == 1 and isinstance(offset, torch.Tensor):  # a decode step: no host read of the position
        return log_linear_attention_recurrent(
            q, k, v, g, level_scales, scale=scale, initial_state=initial_state, offset=offset
        )
    B, T, H, K = q.shape
    V, L = v.shape[-1], level_scales.shape[-1]
    C = chunk_size
    work = compute_dtype(q, k, v, g, level_scales)
    sc = _scale(q, scale)
    off = _int_offset(offset)
    P = off % C  # front padding: chunks start at absolute multiples of C
    N = -(-(P + T) // C)
    pad = (0, 0, 0, 0, P, N * C - P - T)
    q, k, v, lam = (torch.nn.functional.pad(t.to(work), pad) for t in (q, k, v, level_scales))
    gp = torch.nn.functional.pad(g.to(work), pad[2:])  # (B, N*C, H), zero decay on pads
    dev = q.device
    pos = (off - P + torch.arange(N * C, device=dev)).view(N, C)  # absolute positions
    levels = torch.arange(L, device=dev)
    # (B, H, N, C, *) chunk views; b: cumulative log-decay from the segment start (exponents below are differences)
    qc, kc, vc, lc = (t.view(B, N, C, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v, lam))
    b = torch.cumsum(gp, dim=1).view(B, N, C, H).permute(0, 3, 1, 2)  # (B, H, N, C)

    # intra-chunk: the fixed C x C level pattern, masked quadratic form
    idx = torch.arange(C, device=dev)
    lvl = fenwick_level(idx[:, None], idx[None, :], L)  # (C, C)
    tri = idx[:, None] >= idx[None, :]
    decay = torch.where(tri, b[..., :, None] - b[..., None, :], float("-inf")).exp()  # (B, H, N, C, C)
    lam_ij = torch.gather(lc, 4, lvl.expand(B, H, N, C, C))  # λ_i^{ℓ(i, j)}
    scores = (qc @ kc.transpose(-1, -2)) * decay * lam_ij * sc
    o = scores @ vc  # (B, H, N, C, V)

    # Fenwick state of every chunk at its last position, from its own keys: levels relative to that position
    end_lvl = fenwick_level(idx[-1:], idx, L)  # (C,)
    onehot = (end_lvl[:, None] == levels).to(work)  # (C, L)
    w_end = (b[..., -1:] - b).exp()  # (B, H, N, C)
    own = torch.einsum("cl,bhnc,bhnck,bhncv->bhnlkv", onehot, w_end, kc, vc)  # (B, H, N, L, K, V)
    delta = own.sum(3)  # ΔS_m: (B, H, N, K, V)
    b_end = b[..., -1]  # (B, H, N)

    # boundary state before chunk n (n >= 1): own state of chunk n-1, earlier chunks at one level each, initial state
    n_idx = torch.arange(N, device=dev)
    ends, starts = pos[:, -1], pos[:, 0]
    chunk_lvl = fenwick_level(ends[:, None], starts[None, :], L)  # (N_end, N_start): level of chunk m seen from end n
    earlier = n_idx[None, :] < n_idx[:, None]  # m < n (row: the chunk whose end is the reference)
    dec = torch.where(earlier, b_end[..., :, None] - b_end[..., None, :], float("-inf")).exp()  # (B, H, N, N)
    sel = (chunk_lvl[..., None] == levels).to(work)  # (N, N, L)
    boundary = own + torch.einsum("nml,bhnm,bhmkv->bhnlkv", sel, dec, delta)  # state at the end of chunk n
    S0 = q.new_zeros(B, H, L, K, V) if initial_state is None else initial_state.to(work)
    i0 = torch.tensor(off - 1, device=dev)
    if initial_state is not None:
        boundary = boundary + _relevel(S0, fenwick_level(ends, i0, L)) * b_end[..., None, None, None].exp()
    # the state each chunk's queries read: the initial state (chunk 0) or the previous chunk's boundary state
    prev = torch.cat([S0[:, :, None], boundary[:, :, :-1]], 2)  # (B, H, N, L, K, V)
    ref = torch.cat([i0[None], ends[:-1]])  # (N,) the position those states belong to
    b_ref = torch.cat([b.new_zeros(B, H, 1), b_end[..., :-1]], 2)  # (B, H, N)
    d = fenwick_level(pos, ref[:, None], L)  # (N, C)
    lam_in = torch.gather(lc, 4, torch.maximum(levels, d[..., None]).expand(B, H, N, C, L))  # λ_i^{max(ℓ, d_i)}
    read = torch.einsum("bhnck,bhnlkv->bhnclv", qc * sc, prev)
    o = o + torch.einsum("bhnclv,bhncl,bhnc->bhncv", read, lam_in, (b - b_ref[..., None]).exp())
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, P : P + T]

    # final state at the last real position e: earlier chunks as above, its own chunk's keys relative to e
    e = P + T - 1
    ne, ce = divmod(e, C)
    last = pos[ne, ce]
    own_lvl = fenwick_level(last, pos[ne], L)  # (C,)
    keep = (idx <= ce).to(work)
    w_e = torch.where(idx <= ce, b[:, :, ne, ce, None] - b[:, :, ne], float("-inf")).exp() * keep  # (B, H, C)
    final = torch.einsum(
        "cl,bhc,bhck,bhcv->bhlkv", (own_lvl[:, None] == levels).to(work), w_e, kc[:, :, ne], vc[:, :, ne]
    )
    m_lvl = fenwick_level(last, starts[:ne], L)  # (ne,)
    dec_e = (b[:, :, ne, ce, None] - b_end[..., :ne]).exp()  # (B, H, ne)
    final = final + torch.einsum("ml,bhm,bhmkv->bhlkv", (m_lvl[:, None] == levels).to(work), dec_e, delta[:, :, :ne])
    if initial_state is not None:
        final = final + _relevel(S0, fenwick_level(last, i0, L)) * b[:, :, ne, ce, None, None, None].exp()
    return o.to(v.dtype), final


log_linear_attention = Op(
    _OP, log_linear_attention_reference, naive=log_linear_attention_naive, check=check_log_linear_attention
)
