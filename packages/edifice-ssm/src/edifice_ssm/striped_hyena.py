"""StripedHyena: gated long convolutions with modal filters, striped with grouped-query attention.

A stack of pre-norm residual blocks, ``h + Mixer(RMSNorm(h))`` then ``h + GatedMLP(RMSNorm(h))``, whose mixers
alternate (by default even layers Hyena, odd layers attention, as the released 7B model). The Hyena mixer is the
order-2 Hyena operator with a *modal* long filter: every channel's impulse response is a sum of damped complex
exponentials, so the filter is as long as the sequence in training (an FFT convolution) and has an exact recurrent form
with a constant state for decoding. The attention mixer is grouped-query attention with rotary embeddings over the
whole head (:class:`edifice.blocks.attention.Attention`).

Paper / release: Michael Poli, Jue Wang, Stefano Massaroli, Jeffrey Quesnelle, Ryan Carlow, Eric Nguyen, Armin Thomas
(Together AI, 2023), "StripedHyena: Moving Beyond Transformers with Hybrid Signal Processing Models",
https://github.com/togethercomputer/stripedhyena (blog: https://www.together.ai/blog/stripedhyena-7b). The modal
parameterisation and its recurrence are those of Massaroli et al. (2023), "Laughing Hyena Distillery: Extracting
Compact Recurrences From Convolutions", https://arxiv.org/abs/2310.18780 (§3, the modal canonical form).

Equations of the Hyena mixer (width ``D``, ``S = d_state`` modes per channel)::

    (q, k, v) = split(h_feat * (W_in u + b_in))             featurizer: depthwise causal FIR, short_filter_length taps
    h_t       = Re Σ_{n<S} R_n λ_n^t,   λ_n = ρ_n e^{iθ_n},  ρ_n = exp(-exp(log_decay_n))  (|λ_n| < 1: stable)
    y         = W_out (q ⊙ (h * (k ⊙ v) + D ⊙ (k ⊙ v))) + b_out

Recurrent form (Laughing Hyena §3): with ``x = k ⊙ v``, ``s_t = λ ⊙ s_{t-1} + x_t`` (complex, ``S`` per channel) and
``(h * x)_t = Re Σ_n R_n s_{t,n}``, since ``s_t = Σ_{j<=t} λ^{t-j} x_j``. ``forward`` materialises ``h`` for the
call's length and convolves by FFT (:func:`edifice.ops.long_conv`); ``step`` runs the recurrence as a parallel scan
(:func:`edifice_ssm._ssm_kernels.diagonal_scan` over :func:`edifice.ops.linear_recurrence`). A layer's state is the
featurizer's last ``short_filter_length - 1`` inputs and ``s`` (``[B, D, S]`` complex, fp32), a constant size;
attention layers keep a KV cache.

Initialisation: the release code has only a placeholder for the poles (``λ ≈ 0``, marked as a to-do by its authors:
trained weights come from checkpoints). Here every channel's filter starts as an S4D-Lin kernel (Gu et al. 2022,
arXiv:2206.11893, §4): ``λ_n = exp(Δ(-1/2 + iπn))`` with ``log Δ ~ U[log dt_min, log dt_max]`` and
``R_n = 2 C_n (λ_n - 1)/(-1/2 + iπn)``, ``C_n ~ CN(0, 1)``; ``D = 0``. Linear layers and embeddings use GPT-2's
scheme (``N(0, 0.02²)``, zero biases, output projections divided by ``√(2 n_layers)``).

Deviations from the release code: the projections are split as contiguous ``[q, k, v]`` blocks, not per head
(``column_split_hyena``, a checkpoint-layout detail); RMSNorm is the core one (``eps`` inside the root); the poles are
stored as ``(log_decay, angle)`` so that they stay inside the unit circle; no checkpoint converter is provided.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.config import ArchConfig
from edifice_ssm._hyena import GatedConvMixer, InnerFilter, StripedBackbone
from edifice_ssm._ssm_kernels import as_complex, diagonal_scan, log_uniform_dt
from edifice_ssm.configs.striped_hyena import StripedHyenaConfig
from edifice_ssm.s4d import s4d_init

__all__ = ["ModalFilter", "StripedHyena"]


class ModalFilter(InnerFilter):
    """Per channel, ``h_t = Re Σ_n R_n λ_n^t`` plus the skip ``D``: FFT convolution or the modal recurrence.

    Parameters: ``log_decay [D, S]`` (``|λ| = exp(-exp(log_decay))``), ``angle [D, S]`` (``arg λ``), ``residues
    [D, S, 2]`` (complex as ``(re, im)``) and ``D [D]``.
    """

    def __init__(self, channels: int, d_state: int, *, dt_min: float = 0.001, dt_max: float = 0.1) -> None:
        super().__init__()
        if channels <= 0 or d_state <= 0:
            raise ValueError(f"ModalFilter: channels and d_state must be > 0, got {channels}, {d_state}")
        self.channels, self.d_state, self.dt_min, self.dt_max = channels, d_state, dt_min, dt_max
        self.log_decay = nn.Parameter(torch.empty(channels, d_state))
        self.angle = nn.Parameter(torch.empty(channels, d_state))
        self.residues = nn.Parameter(torch.empty(channels, d_state, 2))
        self.D = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """An S4D-Lin kernel per channel (see the module docstring); ``D = 0``."""
        A = s4d_init("lin", 2 * self.d_state).to(torch.complex64)  # (S,): -1/2 + iπn
        dt = torch.exp(log_uniform_dt((self.channels, 1), self.dt_min, self.dt_max))  # (D, 1)
        C = torch.randn(self.channels, self.d_state, dtype=torch.complex64, device="cpu")
        lam = torch.exp(dt * A)  # (D, S)
        with torch.no_grad():
            self.log_decay.copy_(torch.log(dt * 0.5).expand(-1, self.d_state))  # -log|λ| = Δ/2
            self.angle.copy_(dt * A.imag)  # arg λ = Δ π n
            self.residues.copy_(torch.view_as_real(2 * C * (lam - 1) / A))
            nn.init.zeros_(self.D)

    def poles(self) -> Tensor:
        """``λ [D, S]`` complex64."""
        rho = torch.exp(-torch.exp(self.log_decay.float()))
        return torch.polar(rho, self.angle.float())

    def kernel(self, length: int) -> Tensor:
        """``h [D, L]`` fp32: ``Σ_n ρ_n^t (Re R_n cos θ_n t - Im R_n sin θ_n t)``."""
        t = torch.arange(length, device=self.angle.device, dtype=torch.float32)  # (L,)
        decay = torch.exp(-torch.exp(self.log_decay.float())[..., None] * t)  # (D, S, L): ρ^t
        phase = self.angle.float()[..., None] * t  # (D, S, L): θ t
        R = self.residues.float()
        h = decay * (R[..., 0, None] * torch.cos(phase) - R[..., 1, None] * torch.sin(phase))
        return h.sum(1)  # (D, L)

    def forward(self, x: Tensor, *, state: Tensor | None = None) -> Tensor:
        """``h * x + D x`` for ``x [B, T, D]``: FFT convolution, or the recurrence from ``state [B, D, S, 2]``."""
        if state is None:
            return ops.long_conv(x, self.kernel(x.shape[1]), self.D.float())
        lam = self.poles()  # (D, S)
        x32 = x.float()
        drive = x32.unsqueeze(-1).expand(*x.shape, self.d_state).to(torch.complex64)  # (B, T, D, S)
        s = diagonal_scan(lam, drive, as_complex(state))  # (B, T, D, S): s_t = λ s_{t-1} + x_t
        state.copy_(torch.view_as_real(s[:, -1]))
        y = (s * as_complex(self.residues)).real.sum(-1) + self.D.float() * x32  # Re Σ_n R_n s_{t,n} + D x_t
        return y.to(x.dtype)

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """A zero modal state ``[B, D, S, 2]`` (complex as ``(re, im)``, fp32)."""
        device = self.D.device if device is None else device
        return torch.zeros(batch_size, self.channels, self.d_state, 2, device=device, dtype=torch.float32)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, d_state={self.d_state}"


class StripedHyena(StripedBackbone):
    """StripedHyena: Hyena blocks with modal filters at the non-attention layers, GQA with RoPE at the others."""

    config_class: ClassVar[type[ArchConfig]] = StripedHyenaConfig
    config: StripedHyenaConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Attention at ``config.attention_indices``, else a gated convolution with a :class:`ModalFilter`."""
        c = self.config
        if index in c.attention_indices:
            return self.attention_mixer()
        inner = ModalFilter(c.d_model, c.d_state, dt_min=c.dt_min, dt_max=c.dt_max)
        return GatedConvMixer(
            c.d_model,
            inner,
            short_filter_length=c.short_filter_length,
            short_filter_bias=c.short_filter_bias,
            bias=c.bias,
        )
