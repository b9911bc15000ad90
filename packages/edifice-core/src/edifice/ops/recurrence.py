"""The first-order linear recurrence ``h_t = a_t * h_{t-1} + b_t``, the core of diagonal SSMs and gated RNNs.

Each step is the affine map ``f_t(h) = a_t h + b_t``, and composing two of them is again affine:
``f_t ∘ f_s (h) = (a_t a_s) h + (a_t b_s + b_t)``. This operator is associative, so every prefix can be computed by
a parallel scan (Blelloch, 1990, "Prefix sums and their applications"; used for linear RNNs by Martin & Cundy, 2018,
arXiv:1709.04057). The reference is a two-level scan: a Hillis–Steele scan (Hillis & Steele, 1986) inside chunks of
``CHUNK`` steps, all chunks at once, then the same scan over the chunks' end states, recursively. It only multiplies
and adds — no logarithms or divisions — so ``a_t = 0`` is exact and ``|a_t| <= 1`` is stable; it runs in fp32.

Two scan-algorithm variants compute the same states (plain functions, not ops; selective scan picks among them):

* :func:`linear_recurrence_hillis_steele` -- one Hillis–Steele scan over the whole sequence (``ceil(log2 T)``
  rounds, ``O(T log T)`` work, no chunking);
* :func:`linear_recurrence_cumsum` -- the closed form ``h_t = sum_{s<=t} exp(L_t - L_s) b_s`` with ``L`` the
  cumulative sum of *log* decays, inside chunks of ``CUMSUM_CHUNK`` steps (whose end states are then chained by the
  chunked scan). Every exponent is a masked segment sum ``L_t - L_s = sum_{s<r<=t} log a_r <= 0``, summed directly
  rather than as a difference of running totals, so nothing overflows or cancels: it accepts any ``T >= 1`` and any
  log decay in ``[-inf, 0]`` (decays in ``[0, 1]``), and computes in fp32.

Legend: ``B`` batch, ``T`` time, ``...`` any state dims (e.g. ``D`` or ``H, K, V``), ``N`` chunks of ``C`` steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edifice.ops._checks import broadcasts_to, expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op

__all__ = [
    "CHUNK",
    "CUMSUM_CHUNK",
    "check_linear_recurrence",
    "linear_recurrence",
    "linear_recurrence_cumsum",
    "linear_recurrence_hillis_steele",
    "linear_recurrence_naive",
    "linear_recurrence_reference",
]

_OP = "linear_recurrence"

#: Steps scanned together inside one chunk: log2(CHUNK) Hillis–Steele rounds per level.
CHUNK = 32
#: Steps per chunk of :func:`linear_recurrence_cumsum`: its work and memory grow as ``T * CUMSUM_CHUNK``.
CUMSUM_CHUNK = 16


def check_linear_recurrence(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    if not isinstance(b, torch.Tensor) or b.dim() < 2:
        shape = fmt_shape(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
        raise ValueError(f"{_OP}: b must be [B, T, ...] (at least 2-D), got {shape}")
    expect_rank(_OP, "a", a, b.dim(), f"[B, T, ...] broadcastable to b {fmt_shape(b.shape)}")
    expect_floating(_OP, a=a, b=b, initial=initial)
    if a.shape[1] != b.shape[1] or not broadcasts_to(a.shape, b.shape):
        raise ValueError(
            f"{_OP}: a must be [B, T, ...] with T={b.shape[1]}, broadcastable to b {fmt_shape(b.shape)}, "
            f"got {fmt_shape(a.shape)}"
        )
    if initial is not None:
        state = (b.shape[0], *b.shape[2:])
        if not isinstance(initial, torch.Tensor) or not broadcasts_to(initial.shape, state):
            got = fmt_shape(initial.shape) if isinstance(initial, torch.Tensor) else type(initial).__name__
            raise ValueError(f"{_OP}: initial must be [B, ...] = {fmt_shape(state)}, got {got}")


def _hillis_steele(a: torch.Tensor, b: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of the affine maps ``(a_t, b_t)`` along ``dim``: cumulative products and states from h = 0."""
    T = b.shape[dim]
    shift = 1
    while shift < T:
        # Compose each element with the one ``shift`` steps earlier: (a_t, b_t) ∘ (a_s, b_s) = (a_t a_s, a_t b_s + b_t).
        # The first ``shift`` elements already hold complete prefixes and stay as they are.
        head_a, tail_a = a.narrow(dim, 0, shift), a.narrow(dim, shift, T - shift)
        head_b, tail_b = b.narrow(dim, 0, shift), b.narrow(dim, shift, T - shift)
        b = torch.cat([head_b, tail_a * b.narrow(dim, 0, T - shift) + tail_b], dim)
        a = torch.cat([head_a, tail_a * a.narrow(dim, 0, T - shift)], dim)
        shift *= 2
    return a, b


def _scan(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative products and states (from h = 0) along dim 1 of fp32 ``a`` ``[B, T, ...]`` and ``b``."""
    T = b.shape[1]
    if T <= CHUNK:
        return _hillis_steele(a, b, dim=1)
    # Pad T to N*C with identity steps (a = 1, b = 0), which change nothing, and scan every chunk at once.
    N = -(-T // CHUNK)
    pad = [0, 0] * (b.dim() - 2) + [0, N * CHUNK - T]
    a = F.pad(a, pad, value=1.0).reshape(a.shape[0], N, CHUNK, *a.shape[2:])  # (B, N, C, ...)
    b = F.pad(b, pad, value=0.0).reshape(b.shape[0], N, CHUNK, *b.shape[2:])
    a_in, h_in = _hillis_steele(a, b, dim=2)
    # Each chunk as one affine map (its last prefix); scanning those gives every chunk's end state, recursively.
    a_chunk, h_chunk = _scan(a_in[:, :, -1], h_in[:, :, -1])  # (B, N, ...)
    # The state entering chunk n is the end state of chunk n-1 (zero before the first), carried in by a_in.
    h_prev = torch.cat([torch.zeros_like(h_chunk[:, :1]), h_chunk[:, :-1]], 1).unsqueeze(2)  # (B, N, 1, ...)
    a_prev = torch.cat([torch.ones_like(a_chunk[:, :1]), a_chunk[:, :-1]], 1).unsqueeze(2)
    h = h_in + a_in * h_prev
    a_out = a_in * a_prev
    return a_out.flatten(1, 2)[:, :T], h.flatten(1, 2)[:, :T]


def linear_recurrence_reference(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` along dim 1: a, b ``[B, T, ...]`` -> h ``[B, T, ...]``.

    ``a`` broadcasts against ``b`` (e.g. one decay per head); ``initial`` ``[B, ...]`` is ``h_0``, the state before
    the first step (zeros when None). Computed in fp32 by a parallel scan (no loop over T); the result has the
    promoted dtype of ``a`` and ``b``. ``h[:, -1]`` is the final state.
    """
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    a32 = a.float()
    _, h = _scan(a32, _fold_initial(a32, b.float(), initial))
    return h.to(out_dtype)


def _fold_initial(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None) -> torch.Tensor:
    """Fold ``h_0`` into the first input, ``b_1 <- a_1 h_0 + b_1``, so that a scan can start from zero (fp32)."""
    if initial is None:
        return b
    first = a[:, :1] * initial.float().unsqueeze(1) + b[:, :1]
    return torch.cat([first, b[:, 1:]], 1)


def linear_recurrence_hillis_steele(
    a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`linear_recurrence_reference` by a single Hillis–Steele scan over all ``T`` steps (no chunks).

    Same arguments and result; ``ceil(log2 T)`` rounds over the full sequence, so more work than the chunked scan
    for long ``T`` but a single level.
    """
    check_linear_recurrence(a, b, initial)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    a32 = a.float().expand_as(b)
    _, h = _hillis_steele(a32, _fold_initial(a32, b.float(), initial), dim=1)
    return h.to(out_dtype)


def _segment_sums(log_a: torch.Tensor) -> torch.Tensor:
    """``S[..., t, s] = sum_{s<r<=t} log_a[..., r]`` for ``s <= t``, ``-inf`` above the diagonal: ``(..., C, C)``.

    Summed directly over a masked copy (not as ``L_t - L_s``), so large cumulative sums cannot cancel.
    """
    C = log_a.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=log_a.device).tril()  # s <= t
    # x[..., r, s] = log_a[r] where r > s, else 0; a cumulative sum over r gives sum_{s<r<=t}.
    x = log_a.unsqueeze(-1).expand(*log_a.shape, C).masked_fill(causal.T, 0.0)
    sums = x.cumsum(dim=-2)  # (..., t, s)
    return sums.masked_fill(~causal, -torch.inf)


def linear_recurrence_cumsum(log_a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``h_t = exp(log_a_t) * h_{t-1} + b_t`` from cumulative sums of log decays (see module doc).

    ``log_a`` ``[B, T, ...]`` broadcasts against ``b`` ``[B, T, ...]`` and must lie in ``[-inf, 0]`` (decays in
    ``[0, 1]``, e.g. Mamba's ``Δ A``); ``initial`` ``[B, ...]`` is ``h_0``. Any ``T >= 1``; fp32 inside.
    """
    check_linear_recurrence(log_a, b, initial)
    out_dtype = torch.promote_types(log_a.dtype, b.dtype)
    la, b32 = log_a.float().expand_as(b), b.float()
    b32 = _fold_initial(la.exp(), b32, initial)
    B, T = b.shape[:2]
    C = min(CUMSUM_CHUNK, T)
    N = -(-T // C)
    # Pad to N*C with identity steps (log a = 0, b = 0); move time last so each chunk is a (C,) vector.
    pad = [0, 0] * (b.dim() - 2) + [0, N * C - T]
    la = F.pad(la, pad).reshape(B, N, C, *b.shape[2:]).movedim(2, -1)  # (B, N, ..., C)
    bc = F.pad(b32, pad).reshape(B, N, C, *b.shape[2:]).movedim(2, -1)
    # Eq. h_t = sum_{s<=t} exp(L_t - L_s) b_s inside each chunk, from a zero state at its start.
    decay = _segment_sums(la).exp()  # (B, N, ..., t, s)
    h_in = (decay @ bc.unsqueeze(-1)).squeeze(-1)  # (B, N, ..., C)
    # Chain the chunks: the state entering chunk n, carried to step t by exp(L_t) = exp(sum_{r<=t} log a_r).
    carry = la.cumsum(dim=-1).exp()  # (B, N, ..., C)
    ends = linear_recurrence_reference(carry[..., -1], h_in[..., -1])  # (B, N, ...) end state of each chunk
    enter = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], 1).unsqueeze(-1)  # (B, N, ..., 1)
    h = (h_in + carry * enter).movedim(-1, 2).reshape(B, N * C, *b.shape[2:])
    return h[:, :T].to(out_dtype)


def linear_recurrence_naive(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
    """Test oracle: the recurrence one step at a time, in fp32 (fp64 for fp64 inputs)."""
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    work = torch.promote_types(out_dtype, torch.float32)
    a, b = a.to(work).expand_as(b), b.to(work)
    h = torch.zeros_like(b[:, 0]) if initial is None else initial.to(work).expand_as(b[:, 0])
    states = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        states.append(h)
    return torch.stack(states, 1).to(out_dtype)


linear_recurrence = Op(
    "linear_recurrence", linear_recurrence_reference, naive=linear_recurrence_naive, check=check_linear_recurrence
)
