"""StripedHyena 2: a convolutional multi-hybrid of three Hyena operators and attention (the Evo 2 architecture).

A stack of pre-norm residual blocks, ``h + Mixer(RMSNorm(h))`` then ``h + GatedMLP(RMSNorm(h))``. The mixers follow
a repeating ``layer_pattern`` (default Evo 2's ``SE, MR, LI, MHA, SE, MR, LI``). The three Hyena operators are the
same input-dependent convolution ``q ⊙ (h * (k ⊙ v))`` (:class:`edifice_ssm._hyena.GatedConvMixer`) with different
inner filters, each suited to a different span: short explicit filters for local multi-token patterns, medium explicit
filters held back by a decay, and long implicit filters with a recurrent form; attention adds targeted recall. Why
``hyena_v2`` is this paper, and the equations in full, are in ``docs/design/hyena_v2.md``.

Paper: Jerome Ku, Eric Nguyen, David W. Romero, Garyk Brixi, Brandon Yang, Anton Vorontsov, Ali Taghibakhshi, Amy X.
Lu, Dave P. Burke, Greg Brockman, Stefano Massaroli, Christopher Ré, Patrick D. Hsu, Brian L. Hie, Stefano Ermon,
Michael Poli (2025), "Systems and Algorithms for Convolutional Multi-Hybrid Language Models at Scale",
https://arxiv.org/abs/2503.01868 (§2, the operators of StripedHyena 2).

Equations (width ``D``; ``(q, k, v) = split(h_feat * (W_in u + b_in))``, a length-3 featurizer FIR; ``x = k ⊙ v``)::

    Hyena-SE:  y = W_out (q ⊙ (h * x)),           h ∈ R^{G x L_se} free taps (L_se = 7), groups of D/G channels
    Hyena-MR:  y = W_out (q ⊙ (h * x + D ⊙ x)),   h_t = ĥ_t exp(-r_g t/(L_mr - 1)),  r_g = logspace(0, 2) over groups
    Hyena-LI:  y = W_out (q ⊙ (h * x + D ⊙ x)),   h_t = Σ_{n<S} R_n λ_n^t,  λ_n = exp(-exp(p_n + γ_n))  (real modes)
    MHA:       causal (grouped-query) attention with RoPE (base 10^6)

Computation: SE and MR are direct FIR convolutions (:func:`edifice.ops.causal_conv1d`), as the paper runs them;
LI materialises ``h`` at the call's length and convolves by FFT (:func:`edifice.ops.long_conv`). Decoding states,
all of constant size: SE/MR the featurizer's and the filter's last ``L - 1`` inputs
(:func:`edifice_ssm._hyena.fir_step`); LI the featurizer history and the modal state ``s_t = λ ⊙ s_{t-1} + x_t``
(``[B, D, S]`` fp32, :func:`edifice.ops.linear_recurrence`), with ``(h * x)_t = Σ_n R_n s_{t,n}``; attention a KV
cache.

Initialisation (Savanna's, the training code of the paper): SE taps as a Conv1d weight (``U(±1/√L)``); MR
``ĥ = mr_init_scale · N(0, 1)/√L``; LI ``p = -1``, ``γ = log U(li_gamma_min, li_gamma_max)``, ``R = 0.1 N(0, 1)/√S``;
every skip ``D = 0``; Linear layers and embeddings GPT-2's scheme (``N(0, 0.02²)``, zero biases, output projections
divided by ``√(2 n_layers)``).

Deviations (see the design note): contiguous ``[q, k, v]`` split instead of the checkpoints' per-head split; core
RMSNorm; one MLP activation for every layer (GELU; Evo 2's checkpoint-specific ``evo2_style_activations`` are not
reproduced); no checkpoint converter; the systems parts of the paper (blocked kernels, context parallelism, FP8) are
not part of the function computed and are not reproduced.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.config import ArchConfig
from edifice_ssm._hyena import GatedConvMixer, InnerFilter, StripedBackbone, fir_step
from edifice_ssm.configs.hyena_v2 import HyenaV2Config

__all__ = ["ExplicitFilter", "HyenaV2", "RealModalFilter"]


class ExplicitFilter(InnerFilter):
    """Hyena-SE / Hyena-MR: ``groups`` free FIR filters of ``length`` taps shared by blocks of consecutive channels.

    With ``decay=(lo, hi)`` the taps are regularized, ``h_t = ĥ_t exp(-r_g t/(L-1))`` with ``r_g`` log-spaced from
    ``10^lo`` to ``10^hi`` over the groups (Hyena-MR); with ``skip`` a per-channel ``D`` adds ``D ⊙ x``.
    """

    def __init__(
        self,
        channels: int,
        length: int,
        *,
        groups: int | None = None,
        decay: tuple[float, float] | None = None,
        skip: bool = False,
        init_scale: float | None = None,
    ) -> None:
        super().__init__()
        groups = channels if groups is None else groups
        if min(channels, length, groups) <= 0 or channels % groups:
            raise ValueError(
                f"ExplicitFilter: channels, length and groups must be > 0 and groups must divide channels, got "
                f"{channels}, {length}, {groups}"
            )
        self.channels, self.length, self.groups = channels, length, groups
        self.decay, self.init_scale = decay, init_scale
        self.h = nn.Parameter(torch.empty(groups, length))
        self.D = nn.Parameter(torch.empty(channels)) if skip else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``ĥ ~ init_scale · N(0, 1)/√L`` (MR) or ``U(±1/√L)`` (Conv1d's init, SE); ``D = 0``."""
        scale = 1 / math.sqrt(self.length)
        with torch.no_grad():
            if self.init_scale is None:
                self.h.uniform_(-scale, scale)
            else:
                self.h.normal_(0.0, self.init_scale * scale)
            if self.D is not None:
                self.D.zero_()

    def decay_window(self, device: torch.device | None = None) -> Tensor:
        """``exp(-r_g t/(L-1))`` as ``[groups, L]`` fp32 (ones without ``decay``)."""
        if self.decay is None:
            return torch.ones(self.groups, self.length, device=device)
        rates = torch.logspace(self.decay[0], self.decay[1], self.groups, device=device, dtype=torch.float32)
        t = torch.linspace(0, 1, self.length, device=device, dtype=torch.float32)
        return torch.exp(-rates[:, None] * t)

    def kernel(self) -> Tensor:
        """The taps of every channel, ``[channels, L]`` fp32 (``k[:, 0]`` meets the current input)."""
        h = self.h.float() * self.decay_window(self.h.device)  # (G, L)
        return h.repeat_interleave(self.channels // self.groups, dim=0)  # (D, L)

    def forward(self, x: Tensor, *, state: Tensor | None = None) -> Tensor:
        """``h * x (+ D x)`` for ``x [B, T, D]``; with ``state [B, D, L-1]`` continue from it (updated in place)."""
        kernel = self.kernel()
        if state is not None:
            y, history = fir_step(x, kernel, state, self.D)
            state.copy_(history)
            return y
        x32 = x.float()
        y = ops.causal_conv1d(x32, kernel.flip(-1))  # direct FIR: weight[:, -1] meets the current input
        if self.D is not None:
            y = y + self.D.float() * x32
        return y.to(x.dtype)

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Zero history ``[B, D, L-1]`` (the last ``L - 1`` inputs, oldest first)."""
        device = self.h.device if device is None else device
        dtype = self.h.dtype if dtype is None else dtype
        return torch.zeros(batch_size, self.channels, self.length - 1, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, length={self.length}, groups={self.groups}, decay={self.decay}"


class RealModalFilter(InnerFilter):
    """Hyena-LI: per channel ``h_t = Σ_n R_n λ_n^t`` with real ``λ_n = exp(-exp(p_n + γ_n)) ∈ (0, 1)``, plus ``D``."""

    def __init__(self, channels: int, d_state: int, *, gamma_min: float = 0.01, gamma_max: float = 0.1) -> None:
        super().__init__()
        if channels <= 0 or d_state <= 0 or not 0 < gamma_min <= gamma_max:
            raise ValueError(
                f"RealModalFilter: channels, d_state > 0 and 0 < gamma_min <= gamma_max, got {channels}, {d_state}, "
                f"{gamma_min}, {gamma_max}"
            )
        self.channels, self.d_state, self.gamma_min, self.gamma_max = channels, d_state, gamma_min, gamma_max
        self.p = nn.Parameter(torch.empty(channels, d_state))
        self.gamma = nn.Parameter(torch.empty(channels, d_state))
        self.R = nn.Parameter(torch.empty(channels, d_state))
        self.D = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``p = -1``, ``γ = log U(gamma_min, gamma_max)``, ``R = 0.1 N(0, 1)/√S``, ``D = 0`` (Savanna)."""
        with torch.no_grad():
            self.p.fill_(-1.0)
            self.gamma.uniform_(self.gamma_min, self.gamma_max).log_()
            self.R.normal_(0.0, 0.1 / math.sqrt(self.d_state))
            self.D.zero_()

    def rates(self) -> Tensor:
        """The per-step decay rates ``exp(p + γ) > 0``, ``[D, S]`` fp32 (``λ = exp(-rate)``)."""
        return torch.exp(self.p.float() + self.gamma.float())

    def kernel(self, length: int) -> Tensor:
        """``h [D, L]`` fp32: ``Σ_n R_n exp(-rate_n t)`` for ``t = 0 .. L-1``."""
        t = torch.arange(length, device=self.p.device, dtype=torch.float32)
        return torch.einsum("ds,dsl->dl", self.R.float(), torch.exp(-self.rates()[..., None] * t))

    def forward(self, x: Tensor, *, state: Tensor | None = None) -> Tensor:
        """``h * x + D x`` for ``x [B, T, D]``: FFT convolution, or the modal recurrence from ``state [B, D, S]``."""
        if state is None:
            return ops.long_conv(x, self.kernel(x.shape[1]), self.D.float())
        B, T, _ = x.shape
        x32 = x.float()
        lam = torch.exp(-self.rates())  # (D, S)
        decay = lam[None, None].expand(1, T, self.channels, self.d_state)
        s = ops.linear_recurrence(decay, x32.unsqueeze(-1).expand(B, T, self.channels, self.d_state), state)
        state.copy_(s[:, -1])
        y = (s * self.R.float()).sum(-1) + self.D.float() * x32  # Σ_n R_n s_{t,n} + D x_t
        return y.to(x.dtype)

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """A zero modal state ``[B, D, S]`` fp32."""
        device = self.D.device if device is None else device
        return torch.zeros(batch_size, self.channels, self.d_state, device=device, dtype=torch.float32)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, d_state={self.d_state}"


class HyenaV2(StripedBackbone):
    """StripedHyena 2: Hyena-SE/MR/LI blocks and attention blocks, as ``config.layer_pattern`` stripes them."""

    config_class: ClassVar[type[ArchConfig]] = HyenaV2Config
    config: HyenaV2Config

    def build_mixer(self, index: int) -> nn.Module:
        """The operator ``config.layer_kind(index)``: a gated convolution with its filter, or attention."""
        c = self.config
        kind = c.layer_kind(index)
        if kind == "attn":
            return self.attention_mixer()
        inner: InnerFilter
        if kind == "se":
            inner = ExplicitFilter(c.d_model, c.se_filter_length, groups=c.groups)
        elif kind == "mr":
            decay = (c.mr_decay_min, c.mr_decay_max)
            inner = ExplicitFilter(
                c.d_model, c.mr_filter_length, groups=c.groups, decay=decay, skip=True, init_scale=c.mr_init_scale
            )
        else:
            inner = RealModalFilter(c.d_model, c.d_state, gamma_min=c.li_gamma_min, gamma_max=c.li_gamma_max)
        return GatedConvMixer(
            c.d_model,
            inner,
            short_filter_length=c.short_filter_length,
            short_filter_bias=c.short_filter_bias,
            bias=c.bias,
        )
