"""The positive linear recurrence ``h_t = a_t * h_{t-1} + b_t`` scanned in log space (Heinsen's parallel scan).

Heinsen, 2023, "Efficient Parallelization of a Ubiquitous Sequential Computation", arXiv:2311.06281. With
``a_t, b_t > 0`` given as logs, unrolling the recurrence gives (eq. 2 of the paper, with ``a*_t = Σ_{r<=t} log a_r``)::

    log h_t = a*_t + log Σ_{s<=t} exp(log b_s - a*_s)      = a*_t + logcumsumexp(log b - a*)_t

which is two prefix sums (``cumsum`` and ``logcumsumexp``), no loop over time. minGRU and minLSTM (Feng et al. 2024,
arXiv:2410.01201, §3.1.2 / §3.2.2) train with it. The cumulative log-decay ``a*_t`` grows without bound along ``T``,
and ``log b - a*`` with it, which costs fp32 precision on long sequences; so the reference applies the formula inside
chunks of ``CHUNK`` steps only, and carries each chunk's end state into the next with the same scan over the chunks
(recursively) -- the two-level scheme of :mod:`edifice.ops.recurrence`. It computes in fp32.

Legend: ``B`` batch, ``T`` time, ``...`` any state dims (e.g. ``D``), ``N`` chunks of ``C`` steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edifice.ops._checks import broadcasts_to, expect_floating, fmt_shape
from edifice.ops._registry import Op

__all__ = ["CHUNK", "check_log_scan", "log_scan", "log_scan_naive", "log_scan_reference"]

_OP = "log_scan"

#: Steps whose log-decays are summed directly, before the end states are carried across chunks. Small, because fp32
#: error grows with |a*| inside a chunk: 16 keeps minGRU gradients ~10x closer to an fp64 oracle than 64 does.
CHUNK = 16

#: ``log 0`` stand-in for padding: exp() of it is exactly 0, yet it stays finite so no gradient turns into NaN.
_LOG_ZERO = -1e30


def check_log_scan(log_a: torch.Tensor, log_b: torch.Tensor, log_initial: torch.Tensor | None = None) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    if not isinstance(log_b, torch.Tensor) or log_b.dim() < 2:
        shape = fmt_shape(log_b.shape) if isinstance(log_b, torch.Tensor) else type(log_b).__name__
        raise ValueError(f"{_OP}: log_b must be [B, T, ...] (at least 2-D), got {shape}")
    if not isinstance(log_a, torch.Tensor):
        raise TypeError(f"{_OP}: log_a must be a tensor [B, T, ...], got {type(log_a).__name__}")
    expect_floating(_OP, log_a=log_a, log_b=log_b, log_initial=log_initial)
    if log_a.dim() != log_b.dim() or log_a.shape[1] != log_b.shape[1] or not broadcasts_to(log_a.shape, log_b.shape):
        raise ValueError(
            f"{_OP}: log_a must be [B, T, ...] with T={log_b.shape[1]}, broadcastable to log_b "
            f"{fmt_shape(log_b.shape)}, got {fmt_shape(log_a.shape)}"
        )
    if log_initial is not None:
        state = (log_b.shape[0], *log_b.shape[2:])
        if not isinstance(log_initial, torch.Tensor) or not broadcasts_to(log_initial.shape, state):
            got = fmt_shape(log_initial.shape) if isinstance(log_initial, torch.Tensor) else type(log_initial).__name__
            raise ValueError(f"{_OP}: log_initial must be [B, ...] = {fmt_shape(state)}, got {got}")


def _heinsen(log_a: torch.Tensor, log_b: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative log-decays ``a*`` and log-states (from h = 0) along ``dim``: eq. 2 of Heinsen (2023)."""
    a_star = log_a.cumsum(dim)
    return a_star, a_star + torch.logcumsumexp(log_b - a_star, dim)


def _scan(log_a: torch.Tensor, log_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative log-decays and log-states along dim 1 of fp32 ``log_a`` and ``log_b`` ``[B, T, ...]``."""
    T = log_b.shape[1]
    if T <= CHUNK:
        return _heinsen(log_a, log_b, dim=1)
    # Pad T to N*C with identity steps (a = 1, b = 0) and scan every chunk at once.
    N = -(-T // CHUNK)
    pad = [0, 0] * (log_b.dim() - 2) + [0, N * CHUNK - T]
    log_a = F.pad(log_a, pad, value=0.0).reshape(log_a.shape[0], N, CHUNK, *log_a.shape[2:])  # (B, N, C, ...)
    log_b = F.pad(log_b, pad, value=_LOG_ZERO).reshape(log_b.shape[0], N, CHUNK, *log_b.shape[2:])
    a_in, h_in = _heinsen(log_a, log_b, dim=2)
    # Each chunk is one step (its total decay, its end state from zero); scanning those gives every chunk's end state.
    a_chunk, h_chunk = _scan(a_in[:, :, -1], h_in[:, :, -1])  # (B, N, ...)
    # The state entering chunk n is the end state of chunk n-1 (zero, i.e. log 0, before the first).
    h_prev = torch.cat([torch.full_like(h_chunk[:, :1], _LOG_ZERO), h_chunk[:, :-1]], 1).unsqueeze(2)  # (B, N, 1, ...)
    a_prev = torch.cat([torch.zeros_like(a_chunk[:, :1]), a_chunk[:, :-1]], 1).unsqueeze(2)
    h = torch.logaddexp(h_in, a_in + h_prev)  # log(h_in + a_in * h_prev)
    return (a_in + a_prev).flatten(1, 2)[:, :T], h.flatten(1, 2)[:, :T]


def log_scan_reference(
    log_a: torch.Tensor, log_b: torch.Tensor, log_initial: torch.Tensor | None = None
) -> torch.Tensor:
    """``log h`` of every step of ``h_t = a_t h_{t-1} + b_t``: log_a, log_b ``[B, T, ...]`` -> ``[B, T, ...]``.

    ``log_a`` broadcasts against ``log_b``; ``log_initial`` ``[B, ...]`` is ``log h_0`` (``h_0 = 0`` when None).
    Computed in fp32 without a loop over T; the result has the promoted dtype of the inputs. ``exp`` of it is ``h``.
    """
    out_dtype = torch.promote_types(log_a.dtype, log_b.dtype)
    log_a32, log_b32 = log_a.float().expand_as(log_b), log_b.float()
    if log_initial is not None:
        # Fold h_0 into the first input, b_1 <- a_1 h_0 + b_1, so that the scan starts from zero.
        first = torch.logaddexp(log_a32[:, :1] + log_initial.float().unsqueeze(1), log_b32[:, :1])
        log_b32 = torch.cat([first, log_b32[:, 1:]], 1)
    _, log_h = _scan(log_a32, log_b32)
    return log_h.to(out_dtype)


def log_scan_naive(log_a: torch.Tensor, log_b: torch.Tensor, log_initial: torch.Tensor | None = None) -> torch.Tensor:
    """Test oracle: ``h_t = a_t h_{t-1} + b_t`` one step at a time in log space, in fp32 (fp64 for fp64 inputs)."""
    out_dtype = torch.promote_types(log_a.dtype, log_b.dtype)
    work = torch.promote_types(out_dtype, torch.float32)
    log_a, log_b = log_a.to(work).expand_as(log_b), log_b.to(work)
    log_h = None if log_initial is None else log_initial.to(work).expand_as(log_b[:, 0])
    states = []
    for t in range(log_b.shape[1]):
        log_h = log_b[:, t] if log_h is None else torch.logaddexp(log_a[:, t] + log_h, log_b[:, t])
        states.append(log_h)
    return torch.stack(states, 1).to(out_dtype)


log_scan = Op("log_scan", log_scan_reference, naive=log_scan_naive, check=check_log_scan)
