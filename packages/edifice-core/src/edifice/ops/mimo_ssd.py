"""Multi-input multi-output SSD: a scalar-decay SSM per head whose state takes ``R`` rank-one writes per step.

Generalises the state space dual of Mamba-2 (:mod:`edifice.ops.ssd`; Dao & Gu, 2024, arXiv:2405.21060) to the
multi-input, multi-output (MIMO) state update of Mamba-3 (Lahoti, Li, Chen, Wang, Bick, Kolter, Dao & Gu, 2026,
"Mamba-3: Improved Sequence Modeling using State Space Principles", arXiv:2603.15569): per head, with state ``h_t``
of size ``P x N``, a decay ``a_t = exp(log_a_t)`` per position and head, ``R`` inputs ``x_{t,r}`` written with keys
``B_{t,r}`` and ``S`` outputs read with queries ``C_{t,s}``::

    h_t     = a_t h_{t-1} + sum_r x_{t,r} B_{t,r}^T          (a rank-R matrix product X_t B_t^T instead of x_t B_t^T)
    y_{t,s} = h_t C_{t,s}

Every discretisation weight is folded into ``x`` by the caller: Mamba-2's SSD is ``R = S = 1`` with
``x = dt x`` and ``log_a = dt A``; Mamba-3's exponential-trapezoidal rule is ``R = 2 S`` -- the current inputs
weighted by ``gamma_t`` and the previous position's inputs weighted by ``beta_t``, both under the same decay (the
"two SSD calls" of the paper fused into one with twice the rank).

Unrolled, ``y = M x`` with ``M_{(t,s),(u,r)} = C_{t,s}^T B_{u,r} exp(sum_{u<q<=t} log_a_q)`` for ``u <= t``: the
1-semiseparable mask of SSD with ``S x R`` blocks, all of whose entries are kept on the diagonal (the ``R`` writes of
step ``t`` all precede its ``S`` reads). The reference computes it with SSD's block decomposition (chunks of ``L``
positions): diagonal blocks as masked "attention", each chunk's end state, an inter-chunk recurrence run by
:func:`edifice.ops.linear_recurrence`, and the off-diagonal reads of the entering state.

Cumulative sums, segment sums, states and the contractions run in fp32 (fp64 for fp64 inputs; the inter-chunk scan
in fp32); ``y`` comes back in ``x``'s dtype and the final state in the working precision. ``B`` and ``C`` have ``G``
groups shared by ``H / G`` consecutive heads each. ``log_a`` must be ``<= 0`` (a decay in ``(0, 1]``), as for SSD.

Legend: ``B`` batch, ``T`` time, ``R`` input ranks, ``S`` output ranks, ``H`` heads, ``P`` head dim, ``G`` groups of
B/C, ``N`` state size, ``L`` chunk size, ``c`` chunk index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edifice.dtypes import compute_dtype
from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op
from edifice.ops.recurrence import linear_recurrence
from edifice.ops.ssd import segsum

__all__ = ["check_mimo_ssd", "mimo_ssd", "mimo_ssd_naive", "mimo_ssd_reference"]

_OP = "mimo_ssd"

MimoSSDResult = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def check_mimo_ssd(
    x: torch.Tensor,
    log_a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    expect_rank(_OP, "x", x, 5, "[B, T, R, H, P]")
    expect_rank(_OP, "log_a", log_a, 3, "[B, T, H]")
    expect_rank(_OP, "B", B, 5, "[B, T, R, G, N]")
    expect_rank(_OP, "C", C, 5, "[B, T, S, G, N]")
    expect_floating(_OP, x=x, log_a=log_a, B=B, C=C, initial_state=initial_state)
    batch, T, R, H, P = x.shape
    if tuple(log_a.shape) != (batch, T, H):
        raise ValueError(f"{_OP}: log_a must be [B, T, H] = {fmt_shape((batch, T, H))}, got {fmt_shape(log_a.shape)}")
    G, N = B.shape[3], B.shape[4]
    if tuple(B.shape[:3]) != (batch, T, R) or G < 1 or H % G:
        raise ValueError(
            f"{_OP}: B must be [B, T, R, G, N] with B={batch}, T={T}, R={R} and G dividing H={H}, "
            f"got {fmt_shape(B.shape)}"
        )
    if C.shape[:2] != B.shape[:2] or C.shape[3:] != B.shape[3:] or C.shape[2] < 1:
        raise ValueError(
            f"{_OP}: C must be [B, T, S, G, N] = [{batch}, {T}, S, {G}, {N}] (any S >= 1), got {fmt_shape(C.shape)}"
        )
    if initial_state is not None and tuple(initial_state.shape) != (batch, H, P, N):
        raise ValueError(
            f"{_OP}: initial_state must be [B, H, P, N] = {fmt_shape((batch, H, P, N))}, "
            f"got {fmt_shape(initial_state.shape)}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{_OP}: chunk_size must be a positive int, got {chunk_size!r}")


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Repeat the ``G`` groups of ``B``/``C`` ``[B, T, R, G, N]`` to ``[B, T, R, H, N]`` (head h reads h // (H/G))."""
    return t.repeat_interleave(heads // t.shape[3], dim=3)


def mimo_ssd_reference(
    x: torch.Tensor,
    log_a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> MimoSSDResult:
    """Chunked MIMO SSD: x ``[B, T, R, H, P]``, log_a ``[B, T, H]``, B ``[B, T, R, G, N]``, C ``[B, T, S, G, N]``
    -> y ``[B, T, S, H, P]``.

    ``log_a`` is the log decay of each step (``<= 0``); ``initial_state`` ``[B, H, P, N]`` the state before the first
    position (zeros when None). With ``return_final_state`` returns ``(y, final_state)``, the state after the last
    position in the working precision. ``T`` need not be a multiple of ``chunk_size``. No Python loop over time.
    """
    batch, T, R, H, P = x.shape
    S = C.shape[2]
    work = compute_dtype(x)
    L = max(1, min(chunk_size, T))  # a chunk longer than the sequence only adds padding
    n_chunks = -(-T // L)
    pad = n_chunks * L - T
    # Padded positions have log_a = 0 (no decay) and zero input, so they leave the final state untouched.
    a = F.pad(log_a.to(work), (0, 0, 0, pad)).reshape(batch, n_chunks, L, H).permute(0, 3, 1, 2)  # (B, H, c, L)
    xw = F.pad(x.to(work), (0, 0, 0, 0, 0, 0, 0, pad)).reshape(batch, n_chunks, L, R, H, P)
    Bh, Ch = (
        F.pad(_per_head(t.to(work), H), (0, 0, 0, 0, 0, 0, 0, pad)).reshape(batch, n_chunks, L, -1, H, t.shape[-1])
        for t in (B, C)
    )  # (B, c, L, R, H, N) and (B, c, L, S, H, N)
    a_cs = a.cumsum(dim=-1)  # (B, H, c, L): log decay from the chunk start to each position, inclusive

    # 1. Diagonal blocks: reads (l, s) of writes (m, r) with m <= l, scores C_{l,s} . B_{m,r} times the decay.
    decay = torch.exp(segsum(a))  # (B, H, c, L, L)
    scores = torch.einsum("bclshn,bcmrhn->bhclsmr", Ch, Bh) * decay[:, :, :, :, None, :, None]
    y_diag = torch.einsum("bhclsmr,bcmrhp->bclshp", scores, xw)  # (B, c, L, S, H, P)

    # 2. Each chunk's own contribution to the state at its end: sum_{m, r} exp(a_end - a_m) x_{m,r} B_{m,r}^T.
    to_end = torch.exp(a_cs[..., -1:] - a_cs)  # (B, H, c, L)
    chunk_states = torch.einsum("bcmrhn,bhcm,bcmrhp->bchpn", Bh, to_end, xw)  # (B, c, H, P, N)

    # 3. Inter-chunk recurrence h_c = exp(sum of log_a over chunk c) h_{c-1} + chunk_states_c, from initial_state.
    chunk_decay = torch.exp(a_cs[..., -1]).permute(0, 2, 1)[..., None, None]  # (B, c, H, 1, 1)
    h0 = None if initial_state is None else initial_state.to(work)
    ends = linear_recurrence(chunk_decay, chunk_states, h0)  # (B, c, H, P, N): state at each chunk's end
    first = torch.zeros_like(ends[:, :1]) if h0 is None else h0.unsqueeze(1)
    starts = torch.cat([first, ends[:, :-1]], dim=1)  # (B, c, H, P, N): state entering each chunk

    # 4. Off-diagonal blocks: each read sees the entering state, decayed by exp(a_cs) to its position.
    y_off = torch.einsum("bclshn,bchpn,bhcl->bclshp", Ch, starts, torch.exp(a_cs))  # (B, c, L, S, H, P)

    y = (y_diag + y_off).reshape(batch, n_chunks * L, S, H, P)[:, :T].to(x.dtype)
    if return_final_state:
        return y, ends[:, -1]  # (B, H, P, N) in the work dtype (fp32 or fp64)
    return y


def mimo_ssd_naive(
    x: torch.Tensor,
    log_a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> MimoSSDResult:
    """Test oracle: ``h_t = exp(log_a_t) h_{t-1} + sum_r x_{t,r} B_{t,r}^T``, ``y_{t,s} = h_t C_{t,s}``, one step at
    a time (``chunk_size`` is ignored)."""
    batch, T, _, H, P = x.shape
    S, N = C.shape[2], B.shape[-1]
    work = compute_dtype(x)
    Bh, Ch = _per_head(B.to(work), H), _per_head(C.to(work), H)  # (B, T, R|S, H, N)
    xw, aw = x.to(work), log_a.to(work)
    h = x.new_zeros(batch, H, P, N, dtype=work) if initial_state is None else initial_state.to(work)
    ys = []
    for t in range(T):
        writes = torch.einsum("brhp,brhn->bhpn", xw[:, t], Bh[:, t])  # (B, H, P, N): X_t B_t^T, rank R
        h = torch.exp(aw[:, t])[:, :, None, None] * h + writes
        ys.append(torch.einsum("bhpn,bshn->bshp", h, Ch[:, t]))  # (B, S, H, P)
    y = torch.stack(ys, dim=1) if ys else xw.new_zeros(batch, 0, S, H, P)
    y = y.to(x.dtype)
    return (y, h) if return_final_state else y


mimo_ssd = Op("mimo_ssd", mimo_ssd_reference, naive=mimo_ssd_naive, check=check_mimo_ssd)
