"""S5: one multi-input, multi-output diagonal state space per layer, computed with a parallel scan.

Where S4 runs ``H`` single-input SSMs, S5 runs one MIMO SSM ``x' = A x + B u, y = C x + D u`` with ``u, y ∈ R^H`` and a
latent state of size ``P`` (§3). ``A`` is diagonalised, ``A = V Λ V^{-1}``, and the system is kept in that basis:
``B̃ = V^{-1} B``, ``C̃ = C V`` (§3.2). ``Λ`` starts at the eigenvalues of HiPPO-N (the normal part of HiPPO-LegS),
block-diagonal with ``J`` blocks (§4.1, Appendix B); conjugate symmetry stores ``P/2`` states and gives
``y = 2 Re(C̃ x) + D u``. Each state has its own step size ``Δ_p`` and zero-order hold discretises the system,
``Λ̄ = exp(ΛΔ)``, ``B̄ = Λ^{-1}(Λ̄ - I) B̃`` (§2.2; bilinear as an option). The recurrence
``x_k = Λ̄ x_{k-1} + B̄ u_k`` is computed for all ``k`` at once by a parallel scan (§2.2, §3.3), here
:func:`edifice.ops.linear_recurrence` on real/imaginary pairs; ``step`` continues it from the state. Each layer is
the S4-style block: SSM -> GELU -> linear (or GLU), residual, norm (§6, Appendix G).

Paper: Jimmy T.H. Smith, Andrew Warrington, Scott W. Linderman (2023), "Simplified State Space Layers for Sequence
Modeling", ICLR 2023, https://arxiv.org/abs/2208.04933.

Deviations: ``Re Λ = -exp(·)`` is kept negative by its parameterisation (S5 optionally clips it instead);
``B`` starts Lecun-normal and ``C`` with N(0, 1/P) real and imaginary parts, as S5's defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice_ssm._ssm_kernels import (
    SSMBackbone,
    SSMCore,
    SSMState,
    as_complex,
    bilinear,
    diagonal_scan,
    log_uniform_dt,
    nplr_legs,
    set_complex_,
    zoh,
)
from edifice_ssm.configs.s5 import S5Config

__all__ = ["S5", "S5SSM", "hippo_n_blocks"]


def hippo_n_blocks(d_state: int, n_blocks: int) -> tuple[Tensor, Tensor]:
    """Block-diagonal HiPPO-N: eigenvalues ``Λ [P/2]``, eigenvectors ``V [P, P/2]`` (complex128), one per pair."""
    size = d_state // n_blocks
    lam, _, _, v = nplr_legs(size)
    V: Tensor = torch.block_diag(*([v] * n_blocks))  # type: ignore[no-untyped-call]  # (P, P/2)
    return lam.repeat(n_blocks), V


class S5SSM(SSMCore):
    """One MIMO diagonal SSM, ``[B, T, H] -> [B, T, H]``, with ``d_state`` latent states (``d_state/2`` stored)."""

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        n_blocks: int = 1,
        discretization: str = "zoh",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"S5SSM: discretization must be 'zoh' or 'bilinear', got {discretization!r}")
        H, P2 = d_model, d_state // 2
        self.d_model, self.d_state, self.n_blocks, self.discretization = d_model, d_state, n_blocks, discretization
        self.dt_min, self.dt_max = dt_min, dt_max
        self.log_neg_lambda_re = nn.Parameter(torch.empty(P2))  # Re Λ = -exp(.)
        self.lambda_im = nn.Parameter(torch.empty(P2))
        self.B = nn.Parameter(torch.empty(P2, H, 2))  # B̃ = V^{-1} B, complex as (re, im)
        self.C = nn.Parameter(torch.empty(H, P2, 2))  # C̃ = C V
        self.log_dt = nn.Parameter(torch.empty(P2))
        self.D = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """HiPPO-N blocks for Λ; ``B̃ = V* B`` (B Lecun-normal), ``C̃ = C V`` (C ~ CN(0, 2/P)); log-uniform Δ; D ~ N(0,1).

        B and C are drawn from the global RNG on the CPU, where their change of basis runs in fp64.
        """
        lam, V = hippo_n_blocks(self.d_state, self.n_blocks)
        H, P = self.d_model, self.d_state
        with torch.no_grad():
            self.log_neg_lambda_re.copy_(torch.log(-lam.real).float())
            self.lambda_im.copy_(lam.imag.float())
            b = torch.randn(P, H, dtype=torch.float64, device="cpu") / H**0.5  # Lecun normal, fan_in = H
            set_complex_(self.B, V.conj().T @ b.to(V.dtype))
            c = torch.randn(H, P, 2, dtype=torch.float64, device="cpu") / P**0.5
            set_complex_(self.C, torch.view_as_complex(c) @ V)
            self.log_dt.copy_(log_uniform_dt(tuple(self.log_dt.shape), self.dt_min, self.dt_max))
            self.D.normal_()

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """``Λ̄ (P2,)``, ``B̄ (P2, H)`` and ``C̃ (H, P2)``, complex64: ZOH (or bilinear) with one Δ per state."""
        lam = torch.complex(-torch.exp(self.log_neg_lambda_re.float()), self.lambda_im.float())  # (P2,)
        dt = torch.exp(self.log_dt.float())
        a, b_scale = (zoh if self.discretization == "zoh" else bilinear)(lam, dt)
        return a, b_scale[:, None] * as_complex(self.B), as_complex(self.C)

    def forward(self, u: Tensor, *, state: SSMState | None = None) -> Tensor:
        """``u [B, T, H]`` -> ``[B, T, H]`` by the parallel scan, from zero or from ``state`` (updated in place)."""
        a, b, c = self.discrete()
        inputs = torch.einsum("ph,bth->btp", b, u.float().to(b.dtype))  # (B, T, P2): B̄ u_k
        initial = None if state is None else as_complex(state.h)
        x = diagonal_scan(a, inputs, initial)  # (B, T, P2): x_k = Λ̄ x_{k-1} + B̄ u_k
        if state is not None:
            state.h.copy_(torch.view_as_real(x[:, -1]))
        y = 2 * torch.einsum("hp,btp->bth", c, x).real + self.D.float() * u.float()  # y_k = 2 Re(C̃ x_k) + D u_k
        return y.to(u.dtype)

    def init_state(
        self, batch_size: int, *, max_len: int | None = None, device: Any = None, dtype: Any = None
    ) -> SSMState:
        """A zero state ``[B, P/2, 2]`` (fp32; its size does not depend on ``max_len``)."""
        device = self.D.device if device is None else device
        return SSMState(h=torch.zeros(batch_size, self.d_state // 2, 2, device=device))


class S5(SSMBackbone):
    """S5 sequence model: ``n_layers`` blocks around one MIMO SSM each (see the module docstring)."""

    config_class: ClassVar[type[ArchConfig]] = S5Config
    config: S5Config

    def build_ssm(self) -> SSMCore:
        """One layer's MIMO SSM."""
        c = self.config
        return S5SSM(
            c.d_model,
            c.d_state,
            n_blocks=c.n_blocks,
            discretization=c.discretization,
            dt_min=c.dt_min,
            dt_max=c.dt_max,
        )
