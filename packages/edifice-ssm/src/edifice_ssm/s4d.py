"""S4D: diagonal state space models, whose convolution kernel is a Vandermonde product.

Each of the ``H = d_model`` channels is an SSM ``x' = A x + B u, y = C x + D u`` with a *diagonal* complex ``A``
(``N/2`` conjugate pairs, so the system is real and ``y = 2 Re(C x) + D u``). Zero-order hold discretises it,
``Ā = exp(ΔA)``, ``B̄ = (exp(ΔA) - I) A^{-1} B`` (bilinear as an option), and the convolution kernel
``K_ℓ = C Ā^ℓ B̄ = Σ_n C_n B̄_n exp(ΔA_n ℓ)`` is the product of ``C ∘ B̄`` with the Vandermonde matrix of the
``Ā_n`` (§3), computed in ``O(N L)`` and applied with :func:`edifice.ops.long_conv`. The initialisations of §4:
S4D-Inv ``A_n = -1/2 + i (N/π)(N/(2n+1) - 1)``, S4D-Lin ``A_n = -1/2 + iπn``, S4D-LegS (the diagonal part of
HiPPO-LegS's normal form); ``B = 1``, ``C ~ CN(0, 1)``, ``log Δ ~ U[log dt_min, log dt_max]``. ``step`` runs the
diagonal recurrence ``x_k = Ā x_{k-1} + B̄ u_k`` as a parallel scan (:func:`edifice.ops.linear_recurrence`). Each
layer is the S4 block: SSM -> GELU -> linear (or GLU), residual, norm.

Defaults as the authors' standalone ``models/s4/s4d.py`` (state-spaces/s4): S4D-Lin, ``N = 64``, ``Δ`` in
``[1e-3, 0.1]``, ``D ~ N(0, 1)``, and the GLU output (``Conv1d(H, 2H)`` then ``GLU``); ``init="inv"``/``"legs"`` and
``glu=False`` are the paper's other options.

Paper: Albert Gu, Ankit Gupta, Karan Goel, Christopher Ré (2022), "On the Parameterization and Initialization of
Diagonal State Space Models", NeurIPS 2022, https://arxiv.org/abs/2206.11893.

Deviations: ``Re A = -exp(·)`` is kept negative by its parameterisation (the paper's "exp" real-part transform);
the state size ``N`` counts both members of each conjugate pair (``N/2`` are stored).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
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
from edifice_ssm.configs.s4d import S4DConfig

__all__ = ["S4D", "S4DSSM", "s4d_init"]


def s4d_init(kind: str, n: int) -> Tensor:
    """The ``N/2`` diagonal entries of ``A`` (complex128) for S4D-Inv, S4D-Lin or S4D-LegS, state size ``n`` (§4)."""
    idx = torch.arange(n // 2, dtype=torch.float64, device="cpu")
    if kind == "inv":
        imag = n / math.pi * (n / (2 * idx + 1) - 1)
    elif kind == "lin":
        imag = math.pi * idx
    elif kind == "legs":
        return nplr_legs(n)[0]
    else:
        raise ValueError(f"s4d_init: kind must be 'inv', 'lin' or 'legs', got {kind!r}")
    return torch.complex(torch.full_like(imag, -0.5), imag)


class S4DSSM(SSMCore):
    """``H`` independent diagonal SSMs, ``[B, T, H] -> [B, T, H]``: Vandermonde-kernel convolution or scan."""

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        init: str = "inv",
        discretization: str = "zoh",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"S4DSSM: discretization must be 'zoh' or 'bilinear', got {discretization!r}")
        H, N2 = d_model, d_state // 2
        self.d_model, self.d_state, self.init, self.discretization = d_model, d_state, init, discretization
        self.dt_min, self.dt_max = dt_min, dt_max
        self.log_neg_lambda_re = nn.Parameter(torch.empty(H, N2))  # Re A = -exp(.)
        self.lambda_im = nn.Parameter(torch.empty(H, N2))
        self.B = nn.Parameter(torch.empty(H, N2, 2))  # complex as (re, im)
        self.C = nn.Parameter(torch.empty(H, N2, 2))
        self.log_dt = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """§4: A from the chosen init, B = 1, C ~ CN(0, 1), log-uniform Δ, D ~ N(0, 1)."""
        lam = s4d_init(self.init, self.d_state)
        with torch.no_grad():
            self.log_neg_lambda_re.copy_(torch.log(-lam.real).float().expand_as(self.log_neg_lambda_re))
            self.lambda_im.copy_(lam.imag.float().expand_as(self.lambda_im))
            set_complex_(self.B, torch.ones((), dtype=torch.complex64))
            set_complex_(self.C, torch.randn(self.C.shape[:-1], dtype=torch.complex64))
            self.log_dt.copy_(log_uniform_dt(tuple(self.log_dt.shape), self.dt_min, self.dt_max))
            self.D.normal_()

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """``Ā (H, N2)``, ``B̄ (H, N2)`` and ``C (H, N2)``, complex64: ZOH (or bilinear) of ``x' = A x + B u``."""
        lam = torch.complex(-torch.exp(self.log_neg_lambda_re.float()), self.lambda_im.float())  # (H, N2)
        dt = torch.exp(self.log_dt.float())[:, None]  # (H, 1)
        a, b_scale = (zoh if self.discretization == "zoh" else bilinear)(lam, dt)
        return a, b_scale * as_complex(self.B), as_complex(self.C)

    def kernel(self, length: int) -> Tensor:
        """``K [H, L]`` with ``K_ℓ = 2 Re Σ_n C_n B̄_n Ā_n^ℓ``: ``C ∘ B̄`` times the Vandermonde matrix of ``Ā``."""
        a, b, c = self.discrete()
        ell = torch.arange(length, device=a.device, dtype=torch.float32)
        vandermonde = torch.exp(torch.log(a).unsqueeze(-1) * ell)  # (H, N2, L): Ā_n^ℓ
        return 2 * torch.einsum("hn,hnl->hl", c * b, vandermonde).real

    def forward(self, u: Tensor, *, state: SSMState | None = None) -> Tensor:
        """``u [B, T, H]`` -> ``[B, T, H]``: ``K * u + D u``, or the recurrence from ``state`` (updated in place)."""
        if state is None:
            return ops.long_conv(u, self.kernel(u.shape[1]), self.D.float())
        a, b, c = self.discrete()
        h = diagonal_scan(a, b * u.float().unsqueeze(-1), as_complex(state.h))  # (B, T, H, N2): x_k
        state.h.copy_(torch.view_as_real(h[:, -1]))
        y = 2 * (h * c).sum(-1).real + self.D.float() * u.float()  # y_k = 2 Re(C x_k) + D u_k
        return y.to(u.dtype)

    def init_state(
        self, batch_size: int, *, max_len: int | None = None, device: Any = None, dtype: Any = None
    ) -> SSMState:
        """A zero state ``[B, H, N/2, 2]`` (fp32; its size does not depend on ``max_len``)."""
        device = self.D.device if device is None else device
        return SSMState(h=torch.zeros(batch_size, self.d_model, self.d_state // 2, 2, device=device))


class S4D(SSMBackbone):
    """S4D sequence model: ``n_layers`` S4 blocks around diagonal SSMs (see the module docstring)."""

    config_class: ClassVar[type[ArchConfig]] = S4DConfig
    config: S4DConfig

    def build_ssm(self) -> SSMCore:
        """One layer's ``d_model`` diagonal SSMs."""
        c = self.config
        return S4DSSM(
            c.d_model, c.d_state, init=c.init, discretization=c.discretization, dt_min=c.dt_min, dt_max=c.dt_max
        )
