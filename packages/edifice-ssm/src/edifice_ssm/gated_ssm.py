"""Gated SSM: an Edifice-original gated selective diagonal state space model (docs/design/gated_ssm.md).

The catalogue's ``gated_ssm`` ("SSM-inspired gated temporal net") cites no paper; its equations are written down
first in ``docs/design/gated_ssm.md`` and tested against an fp64 loop of them. Each layer is a pre-norm residual
Mamba-style block (Gu & Dao 2023, https://arxiv.org/abs/2312.00752, Fig. 3: input projection, causal depthwise
convolution + SiLU, selective SSM, SiLU output gate, output projection) whose diagonal state *relaxes* towards an
input-dependent target: a forget gate ``a_t = exp(-Δ_t λ)`` and the complementary input gate ``1 - a_t``, which is the
exact zero-order hold of the leaky integrator ``dh/dτ = λ (B x - h)``. The state is therefore a convex combination of
its past and the target (bounded whatever ``Δ`` is), where Mamba's first-order ``Δ B x`` input grows with ``Δ``.

Equations (design note numbering; ``E = expand * d_model`` channels, ``N = d_state`` states per channel)::

    (x, z)        = W_in u                                                     (1)
    x̃             = SiLU(causal_conv1d(x))                                     (2)
    (δ, B, C)     = W_x x̃;     Δ = softplus(W_Δ δ + b_Δ)                       (3), (4)
    a_t[e, n]     = exp(-Δ_t[e] λ[e, n]),   λ = exp(A_log)                     (5)
    h_t[e, n]     = a_t[e, n] h_{t-1}[e, n] + (1 - a_t[e, n]) B_t[n] x̃_t[e]    (6)
    y_t[e]        = Σ_n C_t[n] h_t[e, n] + D[e] x̃_t[e];   o = W_out (y ⊙ SiLU(z))   (7), (8)

Eq. (6) is the linear recurrence ``h_t = a_t h_{t-1} + b_t`` over ``E x N`` fp32 states, computed by the scan that
``config.scan`` (alias ``scan_mode``) names -- ``chunked``: the ``edifice.ops.linear_recurrence`` op; ``cumsum``: the
chunked closed form on the log decays; ``hillis_steele``: one Hillis–Steele scan -- which give the same result.

Parameters and initialisation are Mamba's (:class:`~edifice_ssm.mamba.MambaMixer`, §3.6: S4D-real
``λ[e, n] = n + 1`` stored as ``A_log``, ``Δ`` log-uniform in ``[dt_min, dt_max]`` through ``b_Δ``, ``D = 1``), and the
model divides the output projections by ``sqrt(n_layers)``. Decoding state per layer: the last ``d_conv - 1``
convolution inputs and the ``[E, N]`` fp32 SSM state (constant size). Padding zeroes the mixer's input and sets
``Δ = 0``, so a padded step is the identity (``a = 1``, ``b = 0``).

Deviation: none (the design note is the specification).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.ops.recurrence import linear_recurrence_cumsum, linear_recurrence_hillis_steele
from edifice_ssm.configs.gated_ssm import GatedSSMConfig
from edifice_ssm.mamba import Mamba, MambaMixer, MambaState

__all__ = ["GatedSSM", "GatedSSMMixer", "relaxation_scan"]


def relaxation_scan(log_a: Tensor, b: Tensor, initial: Tensor | None = None, *, algorithm: str = "chunked") -> Tensor:
    """All states of ``h_t = exp(log_a_t) h_{t-1} + b_t`` (eq. 6): ``log_a``, ``b`` ``[B, T, E, N]`` -> fp32 states.

    ``algorithm`` picks the scan: ``"chunked"`` (the ``linear_recurrence`` op), ``"cumsum"`` or ``"hillis_steele"``
    (same states); ``initial [B, E, N]`` is ``h_{-1}`` (zeros when None).
    """
    if algorithm == "cumsum":
        return linear_recurrence_cumsum(log_a, b, initial)
    if algorithm == "hillis_steele":
        return linear_recurrence_hillis_steele(log_a.exp(), b, initial)
    if algorithm != "chunked":
        raise ValueError(
            f"relaxation_scan: algorithm must be 'chunked', 'cumsum' or 'hillis_steele', got {algorithm!r}"
        )
    return ops.linear_recurrence(log_a.exp(), b, initial)


class GatedSSMMixer(MambaMixer):
    """The gated SSM's token mixer: Mamba's block and parameters (eqs. 1-4, :class:`~edifice_ssm.mamba.SelectiveMixer`)
    with the relaxation update of eq. (6) in place of Mamba's scan."""

    def state_space(
        self, x: Tensor, delta: Tensor, B: Tensor, C: Tensor, z: Tensor, state: MambaState | None
    ) -> Tensor:
        """Eqs. (5)-(7) in place of Mamba's scan: the state relaxes towards ``B_t x̃_t`` (``x`` is ``x̃``, eq. 2)."""
        log_a = delta.unsqueeze(-1) * self.decay()  # (B, T, E, N): log of eq. (5); Δ = 0 at padding: a = 1, b = 0
        target = x.float().unsqueeze(-1) * B.float().unsqueeze(2)  # (B, T, E, N): B_t[n] x̃_t[e]
        b = -torch.expm1(log_a) * target  # the input gate 1 - a_t times the target (eq. 6)
        initial = None if state is None else state.ssm
        h = relaxation_scan(log_a, b, initial, algorithm=self.scan)  # (B, T, E, N) fp32
        if state is not None:
            state.ssm.copy_(h[:, -1])
        y = (h * C.float().unsqueeze(2)).sum(-1) + self.D.float() * x.float()  # (B, T, E): eq. (7)
        return (y * F.silu(z.float())).to(x.dtype)


class GatedSSM(Mamba):
    """Gated SSM sequence model: ``n_layers`` pre-norm residual :class:`GatedSSMMixer` blocks and a final RMSNorm."""

    config_class: ClassVar[type[ArchConfig]] = GatedSSMConfig
    config: GatedSSMConfig

    def build_layer(self, index: int) -> nn.Module:
        """A mixer-only pre-norm residual block: ``h + Mixer(RMSNorm(h))``."""
        c = self.config
        mixer = GatedSSMMixer.from_config(c)
        return TransformerBlock(c.d_model, mixer, None, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)
