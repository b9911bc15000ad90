"""Shared pieces of the linear time-invariant SSMs (S4, S4D, S5): HiPPO matrices, discretisation, scans, the layer.

* :func:`hippo_legs` -- the HiPPO-LegS matrices (S4, Gu et al. 2022, arXiv:2111.00396, eq. (2));
* :func:`nplr_legs` -- their normal-plus-low-rank form ``A = V (Λ - P̃ P̃*) V*`` (S4 Theorem 1, Appendix C.1), with
  the eigenvalues halved by conjugate symmetry; its normal part is HiPPO-N (S4D / S5 initialisation);
* :func:`zoh` / :func:`bilinear` -- discretisation of a diagonal system (S4D eq. (5); S4 eq. (3));
* :func:`diagonal_scan` -- ``h_t = a h_{t-1} + b_t`` for a complex diagonal ``a`` through the real
  :func:`edifice.ops.linear_recurrence`, by rotating the phase out (below);
* :class:`SSMMixer` / :class:`SSMBackbone` -- the S4 block (S4 §3.4: SSM -> GELU -> position-wise linear or GLU, in a
  residual block with a norm) and the sequence model around it.

Complex numbers are stored in parameters and states as real tensors with a trailing ``(re, im)`` axis of size 2
(safetensors and ``Module.to(dtype)`` keep them intact); they are viewed as complex in fp32 for the math.

Legend: ``B`` batch, ``T`` time, ``H`` channels (``d_model``), ``N`` state size, ``N2 = N / 2`` conjugate pairs.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.activations import get_activation
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_ssm.configs.s4 import SSMBlockConfig

__all__ = [
    "SSMBackbone",
    "SSMCore",
    "SSMMixer",
    "SSMState",
    "as_complex",
    "bilinear",
    "diagonal_scan",
    "hippo_legs",
    "log_uniform_dt",
    "nplr_legs",
    "set_complex_",
    "zoh",
]


# -- HiPPO ----------------------------------------------------------------------------------------------------------
def hippo_legs(n: int) -> tuple[Tensor, Tensor]:
    """The HiPPO-LegS matrices in fp64 (S4 eq. (2)): ``A [N, N]`` and ``B [N]``.

    ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` for ``n > k``, ``-(n+1)`` for ``n = k``, ``0`` above the diagonal;
    ``B_n = sqrt(2n+1)``.
    """
    idx = torch.arange(n, dtype=torch.float64, device="cpu")  # explicit CPU: this also runs under a meta device
    q = torch.sqrt(2 * idx + 1)  # sqrt(2n+1)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(idx + 1)
    return A, q.clone()


def nplr_legs(n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """HiPPO-LegS as ``A = V (Λ - P̃ P̃*) V*``, keeping one eigenvalue of each conjugate pair (S4 Theorem 1).

    ``A + P Pᵀ = S`` with ``P_n = sqrt(n + 1/2)`` is normal: ``S = -I/2 + (skew-symmetric)``, so ``S = V Λ V*`` with
    a unitary ``V`` and ``Re Λ = -1/2`` (S4 Appendix C.1). Returns fp64/complex128 ``Λ [N2]`` (``Im Λ > 0``),
    ``P̃ = V* P [N2]``, ``B̃ = V* B [N2]`` and ``V [N, N2]``; the full system is these plus their conjugates.
    """
    if n < 2 or n % 2:
        raise ValueError(f"nplr_legs: the state size must be even and >= 2 (conjugate pairs), got {n}")
    A, B = hippo_legs(n)
    P = torch.sqrt(torch.arange(n, dtype=torch.float64, device="cpu") + 0.5)
    S = A + P[:, None] * P[None, :]
    skew = S + 0.5 * torch.eye(n, dtype=torch.float64, device="cpu")  # (N, N), antisymmetric
    # i * skew is Hermitian: its real eigenvalues w give skew's eigenvalues -i w, in pairs ±w with conjugate vectors.
    w, V = torch.linalg.eigh(1j * skew.to(torch.complex128))
    keep = w < 0  # Im(Λ) = -w > 0: one of each pair
    lam = -0.5 - 1j * w[keep]
    V = V[:, keep]  # (N, N2)
    return lam, V.conj().T @ P.to(torch.complex128), V.conj().T @ B.to(torch.complex128), V


# -- discretisation -------------------------------------------------------------------------------------------------
def zoh(lam: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold of ``x' = λ x + u`` (S4D eq. (5)): ``(exp(Δλ), (exp(Δλ) - 1) / λ)``, the latter times B."""
    a = torch.exp(dt * lam)
    return a, (a - 1) / lam


def bilinear(lam: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear (Tustin) discretisation of a diagonal system (S4 eq. (3)).

    Returns ``((1 + Δλ/2) / (1 - Δλ/2), Δ / (1 - Δλ/2))``, the latter times B.
    """
    inv = 1 / (1 - dt * lam / 2)
    return (1 + dt * lam / 2) * inv, dt * inv


def log_uniform_dt(shape: tuple[int, ...], dt_min: float, dt_max: float) -> Tensor:
    """``log Δ`` drawn uniformly in ``[log dt_min, log dt_max]`` (S4 §4 / S4D §4 initialisation of the step size)."""
    return torch.rand(shape, device="cpu") * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def as_complex(x: Tensor) -> Tensor:
    """View a real ``[..., 2]`` (re, im) tensor as complex, in fp32 (fp64 stays fp64)."""
    return torch.view_as_complex(x.to(torch.promote_types(x.dtype, torch.float32)).contiguous())


# -- scan -----------------------------------------------------------------------------------------------------------
def diagonal_scan(a: Tensor, b: Tensor, initial: Tensor | None = None) -> Tensor:
    """All states of ``h_t = a ⊙ h_{t-1} + b_t`` for a complex, time-invariant diagonal ``a [...]``: b ``[B, T, ...]``.

    ``initial [B, ...]`` is the state before the first step (zeros when None). With ``a = ρ e^{iθ}`` and
    ``h̃_t = e^{-iθ(t+1)} h_t``, the recurrence becomes ``h̃_t = ρ h̃_{t-1} + e^{-iθ(t+1)} b_t``: a *real* decay acting
    on the real and imaginary parts alike, which :func:`edifice.ops.linear_recurrence` scans in parallel (as real/imag
    pairs); the phase is rotated back afterwards. Returns complex ``[B, T, ...]``.
    """
    T = b.shape[1]
    if tuple(a.shape) != tuple(b.shape[2:]):
        raise ValueError(f"diagonal_scan: a must be [...] = {list(b.shape[2:])} (b's state dims), got {list(a.shape)}")
    steps = torch.arange(1, T + 1, device=b.device, dtype=torch.float32).reshape(1, T, *([1] * a.dim()))
    rot = torch.polar(torch.ones_like(steps), -a.angle().unsqueeze(0).unsqueeze(0) * steps)  # (1, T, ...)
    pairs = torch.view_as_real(b * rot)  # (B, T, ..., 2)
    decay = a.abs()[None, None, ..., None].expand(1, T, *a.shape, 2)  # the real decay ρ for re and im alike
    init = None if initial is None else torch.view_as_real(initial)
    h = ops.linear_recurrence(decay, pairs, init)  # (B, T, ..., 2)
    return torch.view_as_complex(h.contiguous()) * rot.conj()


# -- the layer ------------------------------------------------------------------------------------------------------
@model_output
class SSMState:
    """Recurrent state of one SSM layer: the complex state as real ``(re, im)`` pairs, updated in place by ``step``."""

    h: Tensor
    """``[B, ..., 2]`` fp32: the hidden state ``x_t`` (its shape is fixed by the layer, not by ``t``)."""


class SSMCore(nn.Module):
    """Base of the SSMs an :class:`SSMMixer` wraps: ``forward(u [B, T, H], *, state=None) -> [B, T, H]``."""

    def forward(self, u: Tensor, *, state: SSMState | None = None) -> Tensor:
        """The convolution (or scan) form from a zero state, or the recurrence from ``state`` (updated in place)."""
        raise NotImplementedError

    def init_state(
        self, batch_size: int, *, max_len: int | None = None, device: Any = None, dtype: Any = None
    ) -> SSMState:
        """A zero recurrent state of constant size."""
        raise NotImplementedError


class SSMMixer(nn.Module):
    """The S4 block's mixer (S4 §3.4): ``SSM (with its D skip) -> activation -> dropout -> linear (or GLU)``.

    ``ssm(u [B, T, H], state=None) -> [B, T, H]`` runs the convolution (or scan) form; with a state it runs the
    recurrence and updates the state. Padded positions (``mask`` False) are zeroed before the SSM, so they leave its
    zero state untouched: a left- or right-padded sequence gives the unpadded result at its valid positions.
    """

    def __init__(self, ssm: SSMCore, d_model: int, *, activation: str, glu: bool, dropout: float) -> None:
        super().__init__()
        self.ssm = ssm
        self.activation = get_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.glu = glu
        self.out_proj = nn.Linear(d_model, 2 * d_model if glu else d_model)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, H]`` -> ``[B, T, H]``; with ``state`` (an :class:`SSMState`) the recurrent form, in place."""
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        y = self.dropout(self.activation(self.ssm(x, state=state)))
        y = self.out_proj(y)
        return F.glu(y, dim=-1) if self.glu else y

    def init_state(self, batch_size: int, **kwargs: Any) -> SSMState:
        """A zero state of the SSM (``max_len`` is ignored: the state has a constant size)."""
        return self.ssm.init_state(batch_size, **kwargs)


class SSMBackbone(SequenceBackbone):
    """A stack of S4-style blocks, ``TransformerBlock(SSMMixer(build_ssm()), ffn=None)``; subclasses add the SSM."""

    config_class: ClassVar[type[ArchConfig]] = SSMBlockConfig
    config: SSMBlockConfig

    def __init__(self, config: SSMBlockConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_ssm(self) -> SSMCore:
        """The SSM of one layer (``[B, T, H] -> [B, T, H]`` with ``init_state``); every subclass implements this."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_ssm()")

    def build_layer(self, index: int) -> nn.Module:
        """One residual block around the SSM mixer; no separate feed-forward (the mixer ends in its own linear)."""
        c = self.config
        mixer = SSMMixer(self.build_ssm(), c.d_model, activation=c.activation, glu=c.glu, dropout=c.dropout)
        return TransformerBlock(
            c.d_model, mixer, None, norm=c.norm, norm_eps=c.norm_eps, norm_position=c.norm_position, dropout=c.dropout
        )

    def build_norm(self) -> nn.Module:
        """Pre-norm stacks end with a norm; post-norm ones are already normalised."""
        c = self.config
        return get_norm(c.norm, c.d_model, eps=c.norm_eps) if c.norm_position == "pre" else nn.Identity()


def set_complex_(param: Tensor, value: Tensor) -> None:
    """Fill a real ``[..., 2]`` parameter with the complex ``value`` (broadcast; works on the meta device too)."""
    with torch.no_grad():
        param.copy_(torch.view_as_real(value.to(torch.complex64)).expand_as(param))
