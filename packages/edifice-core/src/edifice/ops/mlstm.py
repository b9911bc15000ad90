"""The mLSTM cell of xLSTM: a matrix memory with a covariance update, exponential input gate and max stabiliser.

Beck et al., "xLSTM: Extended Long Short-Term Memory", NeurIPS 2024, https://arxiv.org/abs/2405.04517, §2.3 and
appendix A.3 (eqs. 19-27, stabilised form). Per head, with keys pre-scaled by ``1/sqrt(K)`` (eq. 22; here the query
carries the scale, which gives the same ``q^T C`` and ``q^T n``)::

    C_t = f_t C_{t-1} + i_t k_t v_t^T          (eq. 19, matrix memory; stored as C [K, V] so that h = C^T q)
    n_t = f_t n_{t-1} + i_t k_t                (eq. 20, normaliser)
    h_t = C_t^T q_t / max(|n_t^T q_t|, 1)      (eq. 21)
    i_t = exp(ĩ_t),  f_t = sigmoid(f̃_t)         (eqs. 25-26)

Exponentials overflow, so the state is kept scaled by ``exp(-m_t)`` with the stabiliser (appendix A.3)
``m_t = max(log f_t + m_{t-1}, ĩ_t)``; then ``i'_t = exp(ĩ_t - m_t) <= 1``, ``f'_t = exp(log f_t + m_{t-1} - m_t)
<= 1`` and eq. 21 becomes ``h_t = C'^T_t q_t / (max(|n'^T_t q_t|, exp(-m_t)) + eps)``: the scale cancels between
numerator and denominator, only the ``eps`` (as in the xLSTM-7B kernels) sees it. The state ``(C', n', m)`` is fp32.

The reference is the chunkwise-parallel form (Beck et al. 2025, "xLSTM 7B", arXiv:2503.13427, §3; the same
decomposition as gated linear attention): inside a chunk of ``L`` steps the outputs are a masked, decay-weighted
attention ``sum_{s<=t} exp(b_t - b_s + ĩ_s - m_t) (q_t·k_s) v_s`` with ``b_t = sum_{r<=t} log f_r``, plus the carried
state decayed by ``exp(b_t + m_prev - m_t)``; only the end-of-chunk states are computed by a loop over chunks. The
stabiliser ``m_t = max(b_t + m_prev, max_{s<=t}(b_t - b_s + ĩ_s))`` is exactly the recurrent one unrolled, so the
chunked and recurrent forms agree to rounding.

Legend: ``B`` batch, ``H`` heads, ``T`` time, ``K`` query/key size, ``V`` value size, ``N`` chunks of ``L`` steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op

__all__ = [
    "MLSTMState",
    "check_mlstm",
    "mlstm",
    "mlstm_naive",
    "mlstm_reference",
]

_OP = "mlstm"

#: ``(C [B, H, K, V], n [B, H, K], m [B, H])`` in fp32: the memory and normaliser scaled by ``exp(-m)``, and ``m``.
#: Both accumulate raw keys (the query carries ``1/sqrt(K)``), as in the xLSTM-7B kernels.
MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def check_mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial: MLSTMState | None = None,
    *,
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    expect_rank(_OP, "q", q, 4, "[B, H, T, K]")
    B, H, T, K = q.shape
    expect_rank(_OP, "k", k, 4, "[B, H, T, K]")
    expect_rank(_OP, "v", v, 4, "[B, H, T, V]")
    expect_rank(_OP, "i", i, 3, "[B, H, T]")
    expect_rank(_OP, "f", f, 3, "[B, H, T]")
    expect_floating(_OP, q=q, k=k, v=v, i=i, f=f)
    if k.shape != q.shape:
        raise ValueError(f"{_OP}: k must be [B, H, T, K] = {fmt_shape(q.shape)} like q, got {fmt_shape(k.shape)}")
    if v.shape[:3] != (B, H, T):
        raise ValueError(f"{_OP}: v must be [B, H, T, V] with [B, H, T] = [{B}, {H}, {T}], got {fmt_shape(v.shape)}")
    for name, gate in (("i", i), ("f", f)):
        if gate.shape != (B, H, T):
            raise ValueError(f"{_OP}: {name} must be [B, H, T] = [{B}, {H}, {T}], got {fmt_shape(gate.shape)}")
    if initial is not None:
        want = ((B, H, K, v.shape[-1]), (B, H, K), (B, H))
        if len(initial) != 3 or any(tuple(s.shape) != w for s, w in zip(initial, want, strict=True)):
            got = ", ".join(fmt_shape(s.shape) for s in initial)
            raise ValueError(
                f"{_OP}: initial must be (C [B, H, K, V], n [B, H, K], m [B, H]) = "
                f"({', '.join(fmt_shape(w) for w in want)}), got ({got})"
            )
    if chunk_size <= 0:
        raise ValueError(f"{_OP}: chunk_size must be > 0, got {chunk_size}")
    if eps < 0:
        raise ValueError(f"{_OP}: eps must be >= 0, got {eps}")


def _zero_state(q: torch.Tensor, v: torch.Tensor) -> MLSTMState:
    """The empty memory ``(C, n, m) = (0, 0, 0)`` of the xLSTM kernels, in fp32."""
    B, H, _, K = q.shape
    zeros = q.new_zeros
    return (
        zeros(B, H, K, v.shape[-1], dtype=torch.float32),
        zeros(B, H, K, dtype=torch.float32),
        zeros(B, H, dtype=torch.float32),
    )


def _readout(num: torch.Tensor, qn: torch.Tensor, m: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 21 in stabilised form: ``num / (max(|q·n'|, exp(-m)) + eps)``; num ``[..., V]``, qn and m ``[...]``."""
    return num / (torch.maximum(qn.abs(), torch.exp(-m)) + eps).unsqueeze(-1)


def mlstm_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial: MLSTMState | None = None,
    *,
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """mLSTM outputs and final state, chunkwise-parallel: q, k ``[B, H, T, K]``, v ``[B, H, T, V]``, i, f ``[B, H, T]``.

    ``i`` and ``f`` are the gate pre-activations ``ĩ`` (exponential gate) and ``f̃`` (sigmoid gate); a step with
    ``ĩ = -inf`` and ``f̃ = +inf`` leaves the state untouched (how padding is skipped). Returns ``h [B, H, T, V]`` in
    q's dtype and the fp32 state ``(C, n, m)`` after the last step; ``initial`` is the state before the first.
    """
    B, H, T, K = q.shape
    out_dtype = q.dtype
    C, n, m = _zero_state(q, v) if initial is None else tuple(s.float() for s in initial)
    L = min(chunk_size, T)
    N = -(-T // L)
    pad = N * L - T
    q32 = q.float() * K**-0.5
    # Padded steps have no input (ĩ = -inf) and no decay (log f = 0), so they change neither outputs nor state.
    k32, v32 = F.pad(k.float(), (0, 0, 0, pad)), F.pad(v.float(), (0, 0, 0, pad))
    q32 = F.pad(q32, (0, 0, 0, pad))
    log_i = F.pad(i.float(), (0, pad), value=-math.inf)
    log_f = F.pad(F.logsigmoid(f.float()), (0, pad), value=0.0)
    qc, kc, vc = (x.reshape(B, H, N, L, x.shape[-1]) for x in (q32, k32, v32))  # (B, H, N, L, K|V)
    log_i, log_f = log_i.reshape(B, H, N, L), log_f.reshape(B, H, N, L)

    b = log_f.cumsum(-1)  # (B, H, N, L) decay from the chunk start to step t, inclusive
    g = b[..., -1]  # (B, H, N) decay over the whole chunk
    # Weight of input s at the chunk end, log-domain, and its chunk-local maximum (a stabiliser for the sums).
    a = g.unsqueeze(-1) - b + log_i  # (B, H, N, L)
    # Clamped so that a chunk without inputs (all ĩ = -inf, e.g. padding) gives weights exp(-inf) = 0, not NaN.
    a_max = a.amax(-1).clamp_min(-1e30)  # (B, H, N)
    w = torch.exp(a - a_max.unsqueeze(-1))  # (B, H, N, L), <= 1
    wk = w.unsqueeze(-1) * kc  # (B, H, N, L, K)
    kv_chunk = wk.transpose(-1, -2) @ vc  # (B, H, N, K, V)
    k_chunk = wk.sum(-2)  # (B, H, N, K)

    # States entering each chunk: a loop over chunks (not over time) of the stabilised eqs. 19-20.
    C_in, n_in, m_in = [], [], []
    for c in range(N):
        C_in.append(C)
        n_in.append(n)
        m_in.append(m)
        m_new = torch.maximum(g[..., c] + m, a_max[..., c])  # (B, H)
        decay = torch.exp(g[..., c] + m - m_new)  # (B, H)
        scale = torch.exp(a_max[..., c] - m_new)
        C = decay[..., None, None] * C + scale[..., None, None] * kv_chunk[:, :, c]
        n = decay[..., None] * n + scale[..., None] * k_chunk[:, :, c]
        m = m_new
    C_prev, n_prev, m_prev = torch.stack(C_in, 2), torch.stack(n_in, 2), torch.stack(m_in, 2)  # (B, H, N, ...)

    # Intra-chunk log weights D[t, s] = b_t - b_s + ĩ_s for s <= t (eq. 19 unrolled inside the chunk).
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    D = (b.unsqueeze(-1) - b.unsqueeze(-2) + log_i.unsqueeze(-2)).masked_fill(~causal, -math.inf)  # (B,H,N,L,L)
    inter = b + m_prev.unsqueeze(-1)  # (B, H, N, L) log weight of the carried state at step t
    m_t = torch.maximum(inter, D.amax(-1))  # (B, H, N, L) = the recurrent stabiliser
    P = torch.exp(D - m_t.unsqueeze(-1)) * (qc @ kc.transpose(-1, -2))  # (B, H, N, L, L)
    carried = torch.exp(inter - m_t)  # (B, H, N, L)
    num = P @ vc + carried.unsqueeze(-1) * (qc @ C_prev)  # (B, H, N, L, V)
    qn = P.sum(-1) + carried * (qc @ n_prev.unsqueeze(-1)).squeeze(-1)  # (B, H, N, L)
    h = _readout(num, qn, m_t, eps).reshape(B, H, N * L, -1)[:, :, :T]
    return h.to(out_dtype), (C, n, m)


def mlstm_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial: MLSTMState | None = None,
    *,
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """Test oracle: the stabilised recurrence (appendix A.3) one step at a time, in fp32 (fp64 for fp64 inputs)."""
    out_dtype, work = q.dtype, torch.promote_types(q.dtype, torch.float32)
    K = q.shape[-1]
    C, n, m = (s.to(work) for s in (_zero_state(q, v) if initial is None else initial))
    q, k, v, i, f = (x.to(work) for x in (q, k, v, i, f))
    outs = []
    for t in range(q.shape[2]):
        log_f = F.logsigmoid(f[:, :, t])  # (B, H)
        m_new = torch.maximum(log_f + m, i[:, :, t])
        f_act, i_act = torch.exp(log_f + m - m_new), torch.exp(i[:, :, t] - m_new)
        C = f_act[..., None, None] * C + i_act[..., None, None] * (k[:, :, t, :, None] * v[:, :, t, None, :])
        n = f_act[..., None] * n + i_act[..., None] * k[:, :, t]
        m = m_new
        qt = q[:, :, t] * K**-0.5  # (B, H, K)
        num = (qt.unsqueeze(-1) * C).sum(-2)  # (B, H, V)
        outs.append(_readout(num, (qt * n).sum(-1), m, eps))
    return torch.stack(outs, 2).to(out_dtype), (C, n, m)


mlstm = Op("mlstm", mlstm_reference, naive=mlstm_naive, check=check_mlstm)
