"""Selective scan, the input-dependent state-space recurrence of Mamba (Gu & Dao 2023, arXiv:2312.00752).

For every channel ``d`` and state index ``n`` (Algorithm 2, with the zero-order hold of eq. 4 and the usual
simplification ``B̄ ≈ Δ B``)::

    Δ_t   = softplus(delta_t + delta_bias)                (Algorithm 2, step 5: τ_Δ = softplus)
    Ā_t   = exp(Δ_t A)                                    (eq. 4, ZOH)
    h_t   = Ā_t h_{t-1} + Δ_t B_t u_t                     (eq. 2a)
    y_t   = C_t · h_t + D u_t                             (eq. 2b, plus the skip connection D)
    out_t = y_t * silu(z_t)                               (the gate of the Mamba block, Fig. 3)

Layout (Algorithm 2's, batch-first and time-second like every ``edifice.ops`` op; the ``mamba_ssm`` CUDA kernels
take the channels-first transpose): ``u``, ``delta``, ``z`` ``[B, T, D]``; ``A`` ``[D, N]``; ``B``, ``C``
``[B, T, N]`` or ``[B, T, G, N]`` (``G`` groups of ``D / G`` channels share them); ``D``, ``delta_bias`` ``[D]``;
``initial_state`` and the final state ``[B, D, N]``. The state is carried in fp32 whatever the input dtype.

The reference turns the scan into the linear recurrence ``h_t = a_t h_{t-1} + b_t`` with ``a = exp(Δ A)`` and
``b = Δ B u`` over ``D x N`` states, computed by one of three scan algorithms (``algorithm=``): the chunked
parallel scan of :mod:`edifice.ops.recurrence` (the ``linear_recurrence`` op, so its overrides apply), a single
Hillis–Steele scan, or chunked cumulative sums of the log decays ``Δ A`` (see
:func:`~edifice.ops.recurrence.linear_recurrence_cumsum`). All three give the same states.

Legend: ``B`` batch, ``T`` time, ``D`` channels, ``N`` state size, ``G`` groups of B/C.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op
from edifice.ops.recurrence import linear_recurrence, linear_recurrence_cumsum, linear_recurrence_hillis_steele

__all__ = [
    "BLOCK_ELEMENTS",
    "SCAN_ALGORITHMS",
    "check_selective_scan",
    "selective_scan",
    "selective_scan_naive",
    "selective_scan_reference",
]

_OP = "selective_scan"
#: The scan algorithms the reference can use; they compute the same states.
SCAN_ALGORITHMS: tuple[str, ...] = ("chunked", "cumsum", "hillis_steele")


def check_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    algorithm: str = "chunked",
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    expect_rank(_OP, "u", u, 3, "[B, T, D]")
    expect_floating(_OP, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    batch, T, dim = u.shape
    expect_rank(_OP, "A", A, 2, "[D, N]")
    N = A.shape[1]
    if A.shape[0] != dim:
        raise ValueError(f"{_OP}: A must be [D, N] with D={dim}, got {fmt_shape(A.shape)}")
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and tuple(t.shape) != (batch, T, dim):
            raise ValueError(f"{_OP}: {name} must be [B, T, D] = {fmt_shape(u.shape)}, got {fmt_shape(t.shape)}")
    for name, t in (("B", B), ("C", C)):
        ok = t.dim() == 3 and tuple(t.shape) == (batch, T, N)
        ok = ok or (t.dim() == 4 and tuple(t.shape[:2]) == (batch, T) and t.shape[3] == N and dim % t.shape[2] == 0)
        if not ok:
            raise ValueError(
                f"{_OP}: {name} must be [B, T, N] = {fmt_shape((batch, T, N))} or [B, T, G, N] with G dividing "
                f"D={dim}, got {fmt_shape(t.shape)}"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{_OP}: {name} must be [D] = [{dim}], got {fmt_shape(t.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, N):
        raise ValueError(
            f"{_OP}: initial_state must be [B, D, N] = {fmt_shape((batch, dim, N))}, "
            f"got {fmt_shape(initial_state.shape)}"
        )
    if algorithm not in SCAN_ALGORITHMS:
        raise ValueError(f"{_OP}: algorithm must be one of {', '.join(SCAN_ALGORITHMS)}, got {algorithm!r}")


def _per_channel(t: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as ``[B, T, D, N]`` fp32 (a view for ``[B, T, N]``; groups repeated over their channels)."""
    t = t.float()
    if t.dim() == 3:
        return t.unsqueeze(2).expand(-1, -1, dim, -1)
    return t.repeat_interleave(dim // t.shape[2], dim=2)


def _discretize(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None, softplus: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Δ ``[B, T, D]``, log Ā = Δ A ``[B, T, D, N]`` (eq. 4) and the input Δ B u ``[B, T, D, N]``, all fp32."""
    dt = delta.float()
    if bias is not None:
        dt = dt + bias.float()
    if softplus:
        dt = F.softplus(dt)
    log_a = dt.unsqueeze(-1) * A.float()  # (B, T, D, N)
    b = (dt * u.float()).unsqueeze(-1) * _per_channel(B, u.shape[-1])  # (B, T, D, N)
    return dt, log_a, b


def _readout(
    h: torch.Tensor, u: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    """Eq. 2b and the gate: ``(C_t · h_t + D u_t) * silu(z_t)`` in fp32, ``[B, T, D]``."""
    y = (h * _per_channel(C, u.shape[-1])).sum(-1)  # (B, T, D)
    if D is not None:
        y = y + u.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    algorithm: str = "chunked",
) -> Any:
    """The selective scan of eqs. 2a, 2b and 4 (see module doc): ``y [B, T, D]`` in u's dtype.

    With ``return_final_state`` returns the tuple ``(y, h_T)`` where ``h_T`` ``[B, D, N]`` is fp32. ``algorithm``
    picks the scan (``"chunked"``, ``"cumsum"`` or ``"hillis_steele"``); all give the same result. No loop over time.

    The scan materialises ``[B, T, D, N]`` fp32 tensors (the decays, inputs and states), ``N`` times the activations
    around it. Long sequences are therefore scanned in time blocks of about :data:`BLOCK_ELEMENTS` state elements,
    the state carried from block to block, and under autograd each block is checkpointed: backward recomputes a
    block's ``[B, T_block, D, N]`` tensors instead of keeping all of them, so memory no longer grows with ``N T``.
    """
    batch, T, dim = u.shape
    block = max(1, BLOCK_ELEMENTS // (batch * dim * A.shape[1]))
    h = None if initial_state is None else initial_state.float()
    if block >= T:
        y, h = _scan_block(u, delta, B, C, z, h, A, D, delta_bias, delta_softplus, algorithm)
    else:
        checkpointed = torch.is_grad_enabled()
        ys = []
        for start in range(0, T, block):
            n = min(block, T - start)
            u_b, delta_b, B_b, C_b = (t.narrow(1, start, n) for t in (u, delta, B, C))
            z_b = None if z is None else z.narrow(1, start, n)
            args = (u_b, delta_b, B_b, C_b, z_b, h, A, D, delta_bias, delta_softplus, algorithm)
            y, h = checkpoint(_scan_block, *args, use_reentrant=False) if checkpointed else _scan_block(*args)
            ys.append(y)
        y = torch.cat(ys, dim=1)
    return (y, h) if return_final_state else y


#: State elements (``B * T_block * D * N``) a time block of the reference scan holds at once: 2^26, 256 MiB of fp32
#: per ``[B, T_block, D, N]`` tensor. Sequences with fewer run in one block.
BLOCK_ELEMENTS = 2**26


def _scan_block(
    u: torch.Tensor,
    delta: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    z: torch.Tensor | None,
    h0: torch.Tensor | None,
    A: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    algorithm: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 4, 2a and 2b over one time block from state ``h0``: ``(y [B, T, D]`` in u's dtype, ``h_T`` fp32)."""
    _, log_a, b = _discretize(u, delta, A, B, delta_bias, delta_softplus)
    if algorithm == "cumsum":
        h = linear_recurrence_cumsum(log_a, b, h0)  # (B, T, D, N)
    elif algorithm == "hillis_steele":
        h = linear_recurrence_hillis_steele(log_a.exp(), b, h0)
    else:
        h = linear_recurrence(log_a.exp(), b, h0)
    return _readout(h, u, C, D, z).to(u.dtype), h[:, -1]


def selective_scan_naive(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    algorithm: str = "chunked",
) -> Any:
    """Test oracle: Algorithm 2 one time step at a time (eqs. 4, 2a, 2b), in fp32; ``algorithm`` is ignored."""
    batch, T, dim = u.shape
    dt, _, _ = _discretize(u, delta, A, B, delta_bias, delta_softplus)
    Bd, Cd, A32 = _per_channel(B, dim), _per_channel(C, dim), A.float()
    h = u.new_zeros(batch, dim, A.shape[1], dtype=torch.float32) if initial_state is None else initial_state.float()
    ys = []
    for t in range(T):
        a_bar = torch.exp(dt[:, t, :, None] * A32)  # (B, D, N)   eq. 4
        h = a_bar * h + dt[:, t, :, None] * Bd[:, t] * u[:, t, :, None].float()  # eq. 2a
        y = (Cd[:, t] * h).sum(-1)  # (B, D)   eq. 2b
        if D is not None:
            y = y + D.float() * u[:, t].float()
        if z is not None:
            y = y * F.silu(z[:, t].float())
        ys.append(y)
    out = torch.stack(ys, 1).to(u.dtype)
    return (out, h) if return_final_state else out


selective_scan = Op(
    "selective_scan",
    selective_scan_reference,
    naive=selective_scan_naive,
    check=check_selective_scan,
)
