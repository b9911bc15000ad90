"""The state space dual (SSD) layer of Mamba-2: a selective SSM with a scalar decay per head, computed in chunks.

Dao & Gu (2024), "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
Duality", https://arxiv.org/abs/2405.21060. Per head, with state ``h_t`` of size ``P x N``, the selective SSM
recurrence (eq. 1) with SSD's scalar-times-identity state matrix ``A_t = exp(dt_t A) I``, discretised with step ``dt_t``
as in Mamba::

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        y_t = h_t C_t + D x_t

Unrolled, ``y = M (x * dt)`` with the 1-semiseparable matrix ``M_ts = C_t^T B_s exp(sum_{s<r<=t} dt_r A)`` (the
matrix form of §3), a masked "attention" whose mask is the decay between positions (the duality of §5). The
reference computes it as the paper's block decomposition of ``M`` (§6, Listing 1), chunks of ``L`` positions:

1. diagonal blocks -- within each chunk the quadratic form ``(C B^T ∘ exp(segsum(dt A))) (x dt)``;
2. chunk states -- each chunk's contribution to the state at its end, ``sum_s exp(a_end - a_s) dt_s x_s B_s^T``;
3. inter-chunk recurrence -- ``h_c = exp(sum of dt A over chunk c) h_{c-1} + state_c``, a first-order linear
   recurrence over chunks run by :func:`edifice.ops.linear_recurrence` (§6 allows any scan here; Listing 1 uses
   its quadratic segsum form instead);
4. off-diagonal blocks -- each position reads the state entering its chunk, ``exp(a_t) C_t^T h_{c-1}``.

Cumulative sums, segment sums, states and both einsum contractions run in fp32 (fp64 for fp64 inputs); ``y`` comes
back in ``x``'s dtype and the final state in that working precision. ``B`` and ``C`` have ``G`` groups shared by
``H / G`` consecutive heads each (the multi-head patterns of §7, like grouped-query attention).

Legend: ``B`` batch, ``T`` time, ``H`` heads, ``P`` head dim, ``G`` groups of B/C, ``N`` state size, ``L`` chunk size,
``c`` chunk index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edifice.dtypes import compute_dtype
from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op
from edifice.ops.recurrence import linear_recurrence

__all__ = ["check_ssd", "segsum", "ssd", "ssd_naive", "ssd_reference"]

_OP = "ssd"

SSDResult = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def check_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    expect_rank(_OP, "x", x, 4, "[B, T, H, P]")
    expect_rank(_OP, "dt", dt, 3, "[B, T, H]")
    expect_rank(_OP, "A", A, 1, "[H]")
    expect_rank(_OP, "B", B, 4, "[B, T, G, N]")
    expect_rank(_OP, "C", C, 4, "[B, T, G, N]")
    expect_floating(_OP, x=x, dt=dt, A=A, B=B, C=C, D=D, initial_state=initial_state)
    batch, T, H, P = x.shape
    if tuple(dt.shape) != (batch, T, H):
        raise ValueError(f"{_OP}: dt must be [B, T, H] = {fmt_shape((batch, T, H))}, got {fmt_shape(dt.shape)}")
    if tuple(A.shape) != (H,):
        raise ValueError(f"{_OP}: A must be [H] = [{H}], got {fmt_shape(A.shape)}")
    G, N = B.shape[2], B.shape[3]
    if B.shape[:2] != x.shape[:2] or G < 1 or H % G:
        raise ValueError(
            f"{_OP}: B must be [B, T, G, N] with B={batch}, T={T} and G dividing H={H}, got {fmt_shape(B.shape)}"
        )
    if C.shape != B.shape:
        raise ValueError(f"{_OP}: C must have B's shape {fmt_shape(B.shape)}, got {fmt_shape(C.shape)}")
    if D is not None and tuple(D.shape) not in ((H,), (H, P)):
        raise ValueError(f"{_OP}: D must be [H] = [{H}] or [H, P] = [{H}, {P}], got {fmt_shape(D.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, H, P, N):
        raise ValueError(
            f"{_OP}: initial_state must be [B, H, P, N] = {fmt_shape((batch, H, P, N))}, "
            f"got {fmt_shape(initial_state.shape)}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{_OP}: chunk_size must be a positive int, got {chunk_size!r}")


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums ``out[..., i, j] = sum_{j < k <= i} a[..., k]`` for ``i >= j``, ``-inf`` above the diagonal.

    ``a [..., L] -> [..., L, L]``; ``exp(segsum(a))`` is the 1-semiseparable decay mask of §6 (the paper's stable
    ``segsum``: masked cumulative sums rather than differences of one cumulative sum, which cancel catastrophically).
    """
    L = a.shape[-1]
    rows = a.unsqueeze(-1).expand(*a.shape, L)  # (..., L, L): rows[..., k, j] = a_k
    ones = torch.ones(L, L, dtype=torch.bool, device=a.device)
    out = rows.masked_fill(~ones.tril(-1), 0.0).cumsum(dim=-2)  # out[..., i, j] = sum_{j < k <= i} a_k
    return out.masked_fill(~ones.tril(), float("-inf"))


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Repeat the ``G`` groups of ``B``/``C`` ``[B, T, G, N]`` to ``[B, T, H, N]``: head h reads group h // (H/G)."""
    return t.repeat_interleave(heads // t.shape[2], dim=2)


def _skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """Add the skip term ``D x`` (``D`` per head ``[H]`` or per channel ``[H, P]``) to ``y [B, T, H, P]``."""
    if D is None:
        return y
    d = D.to(y.dtype)
    return y + x.to(y.dtype) * (d[:, None] if d.dim() == 1 else d)


def ssd_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> SSDResult:
    """Chunked SSD: x ``[B, T, H, P]``, dt ``[B, T, H]``, A ``[H]``, B/C ``[B, T, G, N]`` -> y ``[B, T, H, P]``.

    ``dt`` is the (positive) step size after any softplus; ``A`` the (negative) continuous-time decay per head;
    ``D`` the optional skip ``[H]`` or ``[H, P]``; ``initial_state`` ``[B, H, P, N]`` the state before the first
    position (zeros when None). With ``return_final_state`` returns ``(y, final_state)``, the state after the last
    position in fp32. ``T`` need not be a multiple of ``chunk_size``. No Python loop over time (§6).
    """
    batch, T, H, P = x.shape
    work = compute_dtype(x)
    # A chunk longer than the sequence only adds padding (a decode step of one position is one 1 x 1 chunk).
    L = max(1, min(chunk_size, T))
    n_chunks = -(-T // L)
    pad = n_chunks * L - T
    a = dt.to(work) * A.to(work)  # (B, T, H): log of the per-step decay exp(dt A)
    xdt = x.to(work) * dt.to(work).unsqueeze(-1)  # (B, T, H, P): the discretised input dt_t x_t
    Bh, Ch = _per_head(B.to(work), H), _per_head(C.to(work), H)  # (B, T, H, N)
    # Padded positions have a = 0 (no decay) and zero input, so they leave the final state untouched.
    a = F.pad(a, (0, 0, 0, pad)).reshape(batch, n_chunks, L, H).permute(0, 3, 1, 2)  # (B, H, c, L)
    xdt, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)).reshape(batch, n_chunks, L, H, -1) for t in (xdt, Bh, Ch))
    a_cs = a.cumsum(dim=-1)  # (B, H, c, L): log decay from the chunk start to each position, inclusive

    # 1. Diagonal blocks: masked attention inside each chunk, scores C_l . B_s times decay exp(sum_{s<r<=l} a_r).
    decay = torch.exp(segsum(a))  # (B, H, c, L, L)
    scores = torch.einsum("bclhn,bcshn->bhcls", Ch, Bh) * decay
    y_diag = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)  # (B, c, L, H, P)

    # 2. Each chunk's own contribution to the state at its end: sum_s exp(a_cs[end] - a_cs[s]) dt_s x_s B_s^T.
    to_end = torch.exp(a_cs[..., -1:] - a_cs)  # (B, H, c, L)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, to_end, xdt)  # (B, c, H, P, N)

    # 3. Inter-chunk recurrence h_c = exp(sum of a over chunk c) h_{c-1} + chunk_states_c, from initial_state.
    chunk_decay = torch.exp(a_cs[..., -1]).permute(0, 2, 1)[..., None, None]  # (B, c, H, 1, 1)
    h0 = None if initial_state is None else initial_state.to(work)
    ends = linear_recurrence(chunk_decay, chunk_states, h0)  # (B, c, H, P, N): state at each chunk's end
    first = torch.zeros_like(ends[:, :1]) if h0 is None else h0.unsqueeze(1)
    starts = torch.cat([first, ends[:, :-1]], dim=1)  # (B, c, H, P, N): state entering each chunk

    # 4. Off-diagonal blocks: each position reads the entering state, decayed by exp(a_cs) to its position.
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, starts, torch.exp(a_cs))  # (B, c, L, H, P)

    y = (y_diag + y_off).reshape(batch, n_chunks * L, H, P)[:, :T]
    y = _skip(y, x, D).to(x.dtype)
    if return_final_state:
        return y, ends[:, -1]  # (B, H, P, N) in the work dtype (fp32 or fp64)
    return y


def ssd_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> SSDResult:
    """Test oracle: the recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``, one step
    at a time (``chunk_size`` is ignored)."""
    batch, T, H, P = x.shape
    N = B.shape[-1]
    work = compute_dtype(x)
    Bh, Ch = _per_head(B.to(work), H), _per_head(C.to(work), H)  # (B, T, H, N)
    xw, dtw, Aw = x.to(work), dt.to(work), A.to(work)
    h = x.new_zeros(batch, H, P, N, dtype=work) if initial_state is None else initial_state.to(work)
    ys = []
    for t in range(T):
        decay = torch.exp(dtw[:, t] * Aw)[:, :, None, None]  # (B, H, 1, 1)
        h = decay * h + (dtw[:, t, :, None] * xw[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(-2)  # (B, H, P, N)
        ys.append((h * Ch[:, t].unsqueeze(-2)).sum(-1))  # (B, H, P)
    y = torch.stack(ys, dim=1) if ys else xw.new_zeros(batch, 0, H, P)
    y = _skip(y, x, D).to(x.dtype)
    return (y, h) if return_final_state else y


ssd = Op("ssd", ssd_reference, naive=ssd_naive, check=check_ssd)
