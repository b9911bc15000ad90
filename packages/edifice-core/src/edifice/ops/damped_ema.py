"""Multi-dimensional damped exponential moving average: Mega's EMA and Megalodon's complex EMA (CEMA) in one op.

Each of the ``D`` channels is expanded to ``N`` dimensions, each an EMA with its own weight, damping and read-out
(Mega, Ma et al. 2023, arXiv:2209.10655, §3.1 eq. (2)-(3)); Megalodon (Ma et al. 2024, arXiv:2404.08801, §3.1,
eq. (5)) rotates each dimension's decay by a phase ``θ``, which makes the state complex::

    h_t[d, n] = α[d, n] β[d, n] x_t[d] + (1 - α[d, n] δ[d, n]) e^{i θ[d, n]} h_{t-1}[d, n]
    y_t[d]    = Re( Σ_n η[d, n] h_t[d, n] )

``α, δ ∈ (0, 1)`` (the models pass sigmoids), ``β`` is Mega's expansion (None: 1, as in Megalodon), ``θ`` None gives
Mega's real EMA, ``η`` may be complex (Megalodon's read-out). Unrolled (Mega eq. (4)), the output is a causal
convolution of ``x`` with the kernel ``K_j[d] = Re Σ_n η α β q^j`` (``q = (1 - α δ) e^{iθ}``) plus the decaying
contribution of an initial state::

    y_t = Σ_{j<=t} K_j x_{t-j} + Re Σ_n η_n q_n^{t+1} h_0[n],      h_T = q^T h_0 + α β Σ_j q^{T-1-j} x_j

The reference builds the Vandermonde powers ``q^j = exp(j log q)``, convolves with
:func:`edifice.ops.long_conv.long_conv_reference` (FFT, ``O(T log T)``) and forms the final state with one
contraction, so the same call serves a whole sequence and a decoding step from a carried state. It computes in fp32
(complex64 for the rotated form; fp64/complex128 for fp64 inputs); ``y`` has ``x``'s dtype, the state stays in the
work dtype. ``damped_ema_naive`` runs the recurrence one step at a time (the test oracle).

Legend: ``B`` batch, ``T`` time, ``D`` channels, ``N`` EMA dimensions per channel.
"""

from __future__ import annotations

import torch

from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op
from edifice.ops.long_conv import long_conv_reference

__all__ = ["check_damped_ema", "damped_ema", "damped_ema_naive", "damped_ema_reference"]

_OP = "damped_ema"


def check_damped_ema(
    x: torch.Tensor,
    alpha: torch.Tensor,
    delta: torch.Tensor,
    eta: torch.Tensor,
    *,
    beta: torch.Tensor | None = None,
    theta: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    expect_rank(_OP, "x", x, 3, "[B, T, D]")
    expect_rank(_OP, "alpha", alpha, 2, "[D, N]")
    expect_floating(_OP, x=x, alpha=alpha, delta=delta, beta=beta, theta=theta)
    B, _, D = x.shape
    N = alpha.shape[1]
    for name, value in (("alpha", alpha), ("delta", delta), ("eta", eta), ("beta", beta), ("theta", theta)):
        if value is not None and tuple(value.shape) != (D, N):
            raise ValueError(f"{_OP}: {name} must be [D, N] = [{D}, {N}], got {fmt_shape(value.shape)}")
    if not (eta.is_floating_point() or eta.is_complex()):
        raise TypeError(f"{_OP}: eta must be a real or complex floating-point tensor, got {eta.dtype}")
    if initial_state is not None:
        if tuple(initial_state.shape) != (B, D, N):
            raise ValueError(
                f"{_OP}: initial_state must be [B, D, N] = [{B}, {D}, {N}], got {fmt_shape(initial_state.shape)}"
            )
        if initial_state.is_complex() != (theta is not None):
            kind = "complex (theta is given)" if theta is not None else "real (no theta)"
            raise TypeError(f"{_OP}: initial_state must be {kind}, got {initial_state.dtype}")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs (the Vandermonde powers lose their tail in half precision)."""
    return torch.promote_types(x.dtype, torch.float32)


def _coefficients(
    x: torch.Tensor,
    alpha: torch.Tensor,
    delta: torch.Tensor,
    eta: torch.Tensor,
    beta: torch.Tensor | None,
    theta: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(p = α β, log q, η)`` in the work dtype; ``log q`` and ``η`` complex when ``θ`` is given."""
    work = _work_dtype(x)
    alpha, delta = alpha.to(work), delta.to(work)
    p = alpha if beta is None else alpha * beta.to(work)
    log_q: torch.Tensor = torch.log1p(-alpha * delta)  # log |q|, (D, N)
    complex_dtype = torch.complex128 if work == torch.float64 else torch.complex64
    if theta is not None:
        log_q = torch.complex(log_q, theta.to(work))  # log q = log|q| + iθ
    elif eta.is_complex():
        log_q = log_q.to(complex_dtype)
    return p, log_q, eta.to(log_q.dtype)


def damped_ema_reference(
    x: torch.Tensor,
    alpha: torch.Tensor,
    delta: torch.Tensor,
    eta: torch.Tensor,
    *,
    beta: torch.Tensor | None = None,
    theta: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The damped EMA of ``x [B, T, D]`` in its convolution form: ``(y [B, T, D], final state [B, D, N])``.

    See the module docstring for the recurrence; ``initial_state`` (real, or complex when ``theta`` is given) is the
    state before ``x[:, 0]`` (None: zeros).
    """
    T = x.shape[1]
    work = _work_dtype(x)
    p, log_q, eta = _coefficients(x, alpha, delta, eta, beta, theta)
    steps = torch.arange(T + 1, device=x.device, dtype=work)
    vander = torch.exp(steps * log_q.unsqueeze(-1))  # q^j, (D, N, T + 1)
    kernel = torch.einsum("dn,dnj->dj", eta * p, vander[..., :T])  # (D, T), eq. (4)'s kernel
    xw = x.to(work)
    y = long_conv_reference(xw, kernel.real if kernel.is_complex() else kernel)  # (B, T, D)
    # h_T = q^T h_0 + p Σ_j q^{T-1-j} x_j: the input part is the kernel's powers reversed, without η.
    final = p * torch.einsum("btd,dnt->bdn", xw.to(vander.dtype), vander[..., :T].flip(-1))
    if initial_state is not None:
        h0 = initial_state.to(vander.dtype)
        carried = torch.einsum("bdn,dnt->btd", eta * h0, vander[..., 1:])  # Re Σ_n η q^{t+1} h_0
        y = y + (carried.real if carried.is_complex() else carried)
        final = final + vander[..., T] * h0
    if theta is None and final.is_complex():  # a complex η alone keeps the state real (q is real)
        final = final.real
    return y.to(x.dtype), final


def damped_ema_naive(
    x: torch.Tensor,
    alpha: torch.Tensor,
    delta: torch.Tensor,
    eta: torch.Tensor,
    *,
    beta: torch.Tensor | None = None,
    theta: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Test oracle: the recurrence of Mega eq. (2) / Megalodon eq. (5), one time step at a time."""
    B, T, D = x.shape
    work = _work_dtype(x)
    alpha, delta = alpha.to(work), delta.to(work)
    p = alpha if beta is None else alpha * beta.to(work)
    q: torch.Tensor = 1.0 - alpha * delta
    if theta is not None:
        q = torch.polar(q, theta.to(work))
    state_dtype = q.dtype
    h = (
        torch.zeros(B, D, alpha.shape[1], dtype=state_dtype, device=x.device)
        if initial_state is None
        else initial_state.to(state_dtype)
    )
    outs = []
    for t in range(T):
        h = p * x[:, t, :, None].to(work) + q * h
        out = (eta.to(torch.promote_types(eta.dtype, state_dtype)) * h).sum(-1)
        outs.append(out.real if out.is_complex() else out)
    return torch.stack(outs, 1).to(x.dtype), h


damped_ema = Op("damped_ema", damped_ema_reference, naive=damped_ema_naive, check=check_damped_ema)
