"""S4: structured state spaces with a diagonal-plus-low-rank HiPPO matrix, applied as a long convolution.

Each of the ``H = d_model`` channels is a linear time-invariant SSM ``x' = A x + B u, y = C x + D u`` with state size
``N``. ``A`` starts as HiPPO-LegS (eq. (2)), written in normal-plus-low-rank form and diagonalised,
``A = Λ - P Q*`` with ``Q = P`` (Theorem 1), and is trained in that DPLR parameterisation. The bilinear method
discretises it (eq. (3)): ``Ā = (I - Δ/2 A)^{-1} (I + Δ/2 A)``, ``B̄ = (I - Δ/2 A)^{-1} Δ B``. The recurrent view,
``x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k``, unrolls to the convolution ``y = K * u + D u`` with
``K = (C B̄, C Ā B̄, ..., C Ā^{L-1} B̄)`` (eqs. (4)-(5)). Training computes ``K`` with Algorithm 1 -- ``C̃ = C (I - Ā^L)``,
the truncated generating function at the roots of unity through a Cauchy kernel and the Woodbury identity
(Lemmas C.2-C.4), then an inverse FFT -- and applies it with :func:`edifice.ops.long_conv`; ``step`` runs the
recurrence. Each layer is the S4 block (§3.4): SSM -> GELU -> GLU output (``Linear(d, 2d)``, the authors' standalone
``S4Block`` default ``final_act='glu'``; ``glu=False`` gives a plain linear), residual, LayerNorm.

Paper: Albert Gu, Karan Goel, Christopher Ré (2022), "Efficiently Modeling Long Sequences with Structured State
Spaces", ICLR 2022, https://arxiv.org/abs/2111.00396.

Deviations and choices:

* The state is kept in the eigenbasis of the normal part, with its ``N/2`` conjugate pairs stored once and
  completed by conjugation (the full ``N``-dimensional system is real); ``Re Λ = -exp(·)`` stays negative.
* Algorithm 1, step 3 is evaluated as ``k'00 - k'01 k'10 (1 + ω) / (2 + (1 + ω) k'11)`` with
  ``k'ij = Σ_n 2 a_n b_n / ((2/Δ)(1 - ω) - (1 + ω) λ_n)`` -- the same quantity multiplied through by ``(1 + ω)``, so
  that the Nyquist node ``ω = -1`` (even ``L``) is finite instead of ``∞ · 0``. The Cauchy sums are materialised
  (``O(N L)`` memory per channel); ``Ā^L`` is a dense matrix power, fine for the usual ``N <= 64``.
* ``step`` uses the dense ``Ā`` (``O(N^2)`` per channel and position) and loops over the positions it is given.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.config import ArchConfig
from edifice_ssm._ssm_kernels import SSMBackbone, SSMCore, SSMState, as_complex, log_uniform_dt, nplr_legs, set_complex_
from edifice_ssm.configs.s4 import S4Config

__all__ = ["S4", "S4SSM"]


class S4SSM(SSMCore):
    """``H`` independent DPLR state space models, ``[B, T, H] -> [B, T, H]``: convolution kernel or recurrence."""

    def __init__(self, d_model: int, d_state: int, *, dt_min: float = 0.001, dt_max: float = 0.1) -> None:
        super().__init__()
        H, N2 = d_model, d_state // 2
        self.d_model, self.d_state, self.dt_min, self.dt_max = d_model, d_state, dt_min, dt_max
        self.log_neg_lambda_re = nn.Parameter(torch.empty(H, N2))  # Re Λ = -exp(.)
        self.lambda_im = nn.Parameter(torch.empty(H, N2))
        self.P = nn.Parameter(torch.empty(H, N2, 2))  # low-rank term, complex as (re, im)
        self.B = nn.Parameter(torch.empty(H, N2, 2))
        self.C = nn.Parameter(torch.empty(H, N2, 2))
        self.log_dt = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """HiPPO-LegS in NPLR form for Λ, P, B (Theorem 1); C complex N(0, 1); log-uniform Δ; D ~ N(0, 1)."""
        lam, p, b, _ = nplr_legs(self.d_state)
        with torch.no_grad():
            self.log_neg_lambda_re.copy_(torch.log(-lam.real).float().expand_as(self.log_neg_lambda_re))
            self.lambda_im.copy_(lam.imag.float().expand_as(self.lambda_im))
            set_complex_(self.P, p)
            set_complex_(self.B, b)
            set_complex_(self.C, torch.randn(self.C.shape[:-1], dtype=torch.complex64))
            self.log_dt.copy_(log_uniform_dt(tuple(self.log_dt.shape), self.dt_min, self.dt_max))
            self.D.normal_()

    # -- the system --------------------------------------------------------------------------------------------
    def _full_system(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``Λ, P, B, C`` over all ``N`` states (pairs completed by conjugates), complex ``(H, N)``; Δ ``(H,)``."""
        lam = torch.complex(-torch.exp(self.log_neg_lambda_re.float()), self.lambda_im.float())  # (H, N2)

        def full(z: Tensor) -> Tensor:
            return torch.cat([z, z.conj()], dim=-1)  # (H, N)

        return full(lam), full(as_complex(self.P)), full(as_complex(self.B)), full(as_complex(self.C)), self.dt()

    def dt(self) -> Tensor:
        """The step sizes Δ ``(H,)`` in fp32."""
        return torch.exp(self.log_dt.float())

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """Bilinear discretisation (eq. (3)) of ``A = Λ - P P*``: dense ``Ā (H, N, N)``, ``B̄ (H, N)``; and ``C``."""
        lam, p, b, c, dt = self._full_system()
        dA = _bilinear_dplr(lam, p, dt)
        # B̄ = (I - Δ/2 A)^{-1} Δ B = (Ā + I) Δ B / 2, since Ā + I = 2 (I - Δ/2 A)^{-1}.
        dB = (torch.einsum("hnm,hm->hn", dA, b) + b) * (dt / 2).to(b.dtype)[:, None]
        return dA, dB, c

    def kernel(self, length: int) -> Tensor:
        """The convolution kernel ``K [H, L]``, ``K_j = C Ā^j B̄``, by Algorithm 1 (Cauchy kernel + Woodbury + iFFT)."""
        lam, p, b, c, dt = self._full_system()
        dA = _bilinear_dplr(lam, p, dt)
        # Step 1: C̃ = C (I - Ā^L), which truncates the generating function to L terms (Lemma C.3).
        c_tilde = c - (c.unsqueeze(-2) @ torch.linalg.matrix_power(dA, length)).squeeze(-2)  # (H, N)
        # Step 4: the roots of unity ω_k = exp(-2πik/L); K is real, so k = 0 .. L/2 suffice (irfft below).
        freqs = torch.arange(length // 2 + 1, device=lam.device, dtype=torch.float32)
        omega = torch.polar(torch.ones_like(freqs), -2 * math.pi * freqs / length)  # (F,)
        # Step 2: Cauchy sums with R'(ω) = 2 / ((2/Δ)(1 - ω) - (1 + ω) λ) = (2 / (1 + ω)) (g(ω) - λ)^{-1}.
        den = (2 / dt).to(lam.dtype)[:, None, None] * (1 - omega) - (1 + omega) * lam.unsqueeze(-1)  # (H, N, F)
        # All four sums k'ij = Σ_n 2 left_i right_j / den in one contraction: left = (C̃, P*), right = (B, P).
        left, right = torch.stack([c_tilde, p.conj()]), torch.stack([b, p])  # (2, H, N)
        k = torch.einsum("ihn,jhn,hnf->ijhf", left, right, 2 / den)  # (2, 2, H, F)
        k00, k01, k10, k11 = k[0, 0], k[0, 1], k[1, 0], k[1, 1]
        # Step 3: Woodbury, (g - Λ + P P*)^{-1} = R - R P (1 + P* R P)^{-1} P* R, multiplied through by (1 + ω).
        k_hat = k00 - k01 * k10 * (1 + omega) / (2 + (1 + omega) * k11)  # (H, F)
        kernel: Tensor = torch.fft.irfft(k_hat, n=length)  # step 5: (H, L)
        return kernel

    # -- forward and step ---------------------------------------------------------------------------------------
    def forward(self, u: Tensor, *, state: SSMState | None = None) -> Tensor:
        """``u [B, T, H]`` -> ``y [B, T, H]``: ``K * u + D u`` (eq. (5)), or the recurrence (eq. (3)) from ``state``."""
        if state is None:
            return ops.long_conv(u, self.kernel(u.shape[1]), self.D.float())
        dA, dB, c = self.discrete()
        h = as_complex(state.h)  # (B, H, N)
        u32 = u.float()
        ys = []
        for t in range(u.shape[1]):
            h = torch.einsum("hnm,bhm->bhn", dA, h) + dB * u32[:, t, :, None].to(dB.dtype)  # x_k = Ā x_{k-1} + B̄ u_k
            ys.append((h * c).sum(-1).real + self.D.float() * u32[:, t])  # y_k = C x_k + D u_k
        state.h.copy_(torch.view_as_real(h))
        return torch.stack(ys, 1).to(u.dtype)

    def init_state(
        self, batch_size: int, *, max_len: int | None = None, device: Any = None, dtype: Any = None
    ) -> SSMState:
        """A zero state ``[B, H, N, 2]`` (fp32; its size does not depend on ``max_len``)."""
        device = self.D.device if device is None else device
        return SSMState(h=torch.zeros(batch_size, self.d_model, self.d_state, 2, device=device))


def _bilinear_dplr(lam: Tensor, p: Tensor, dt: Tensor) -> Tensor:
    """``Ā = (I - Δ/2 A)^{-1} (I + Δ/2 A)`` (eq. (3)) for ``A = diag(λ) - p p*``, dense ``(H, N, N)``.

    ``I - Δ/2 A = D + (Δ/2) p p*`` with ``D = diag(1 - Δ/2 λ)``, so the Woodbury identity (Sherman-Morrison for the
    rank-1 term, as in the paper's Appendix C.2) inverts it in closed form:
    ``(D + u p*)^{-1} = D^{-1} - D^{-1} u p* D^{-1} / (1 + p* D^{-1} u)`` with ``u = Δ/2 p``. No linear solve: it
    costs ``O(N^2)`` and never synchronises with the host, so ``step`` can be captured in a CUDA graph.
    """
    N = lam.shape[-1]
    half = (dt / 2).to(lam.dtype)[:, None]  # (H, 1)
    d_inv = 1 / (1 - half * lam)  # D^{-1}, (H, N)
    left_u = d_inv * half * p  # D^{-1} u
    right = p.conj() * d_inv  # p* D^{-1}
    scale = 1 + (p.conj() * left_u).sum(-1, keepdim=True)  # 1 + p* D^{-1} u, (H, 1)
    inverse = torch.diag_embed(d_inv) - left_u.unsqueeze(-1) * (right / scale).unsqueeze(-2)  # (H, N, N)
    A = torch.diag_embed(lam) - p.unsqueeze(-1) * p.conj().unsqueeze(-2)  # (H, N, N)
    eye = torch.eye(N, dtype=A.dtype, device=A.device)
    dA: Tensor = inverse @ (eye + half.unsqueeze(-1) * A)
    return dA


class S4(SSMBackbone):
    """S4 sequence model: ``n_layers`` S4 blocks (see the module docstring)."""

    config_class: ClassVar[type[ArchConfig]] = S4Config
    config: S4Config

    def build_ssm(self) -> SSMCore:
        """One layer's ``d_model`` DPLR SSMs."""
        c = self.config
        return S4SSM(c.d_model, c.d_state, dt_min=c.dt_min, dt_max=c.dt_max)
