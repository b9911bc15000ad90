"""GSS: the Gated State Space layer, a GELU-gated unit whose context is a reduced-width diagonal state space.

Each layer is a pre-norm residual block around the GSS unit of Fig. 1 (the paper's pseudocode): the normalised input
is projected up to ``F = expand * E`` channels (the gate ``v``) and down to ``H = E / 4`` channels (``u``), both with
GELU; ``u`` is contextualised along time by a *simplified DSS* (Diagonal State Spaces, Gupta et al. 2022) computed as
an FFT long convolution; the result, which is linear in ``u``, is projected back up to ``F``, multiplies the gate,
and is projected to ``E``. Contextualising in ``H << E`` channels is what makes GSS 2-3x faster than DSS on TPUs.

Paper: Harsh Mehta, Ankit Gupta, Ashok Cutkosky, Behnam Neyshabur, "Long Range Language Modeling via Gated State
Spaces", ICLR 2023, https://arxiv.org/abs/2206.13947 (Fig. 1: GSS layer and pseudocode; §3). The kernel is DSS-EXP
(Gupta, Gu & Berant 2022, "Diagonal State Spaces are as Effective as Structured State Spaces",
https://arxiv.org/abs/2203.14343, Proposition 1(a)) with ``Δ = 1`` and one ``Λ`` shared by the ``H`` channels, as
GSS's simplified DSS does.

Equations (``x`` the block's normalised input, ``E = d_model``; Fig. 1 pseudocode)::

    v = GELU(W_v x + b_v)                 [F]        u = GELU(W_u x + b_u)        [H]
    ũ = LayerNorm(u)                                                                    (the DSS's input norm)
    Λ_n = -exp(λ_re,n) + i exp(λ_im,n)                                      n = 1..N    (Re Λ < 0: stable)
    K_{h,ℓ} = Re Σ_n W_{h,n} (e^{Λ_n} - 1) / Λ_n · e^{Λ_n ℓ}               DSS-EXP kernel, Prop. 1(a), Δ = 1
    y_h = (K_h * ũ_h) + D_h ũ_h                                              causal convolution (ops.long_conv)
    uc = W_c y + b_c                      [F]        o = W_o (uc ⊙ v) + b_o       [E]

Recurrent form (``step``): the kernel is that of the diagonal system ``s_t = e^{Λ} ⊙ s_{t-1} + ũ_t`` (per channel
``h``, ``N`` complex states), ``y_t = Re Σ_n W̄_{h,n} s_{t,n} + D_h ũ_t`` with ``W̄ = W (e^Λ - 1) / Λ``; it is
scanned in parallel over any number of new positions (``_ssm_kernels.diagonal_scan`` on the ``linear_recurrence``
op). The state is ``[B, H, N]`` complex (stored as ``(re, im)`` fp32 pairs), a constant size.

Initialisation: the paper reports that random initialisation suffices for language modelling (unlike DSS's skew-HiPPO
init); we draw ``λ_re, λ_im, Re W, Im W, D ~ N(0, 1)`` (as the reference implementation derived from the paper does)
and initialise the dense layers as Flax's ``Dense`` (the pseudocode's ``dense``): LeCun-normal weights
(truncated normal, variance 1/fan_in) and zero biases.

Deviations: none in the mathematics. Padding (``attention_mask``) zeroes the DSS input ``ũ`` at padded positions, so
they add nothing to the convolution: left- and right-padded sequences give the unpadded result. A padded step in the
middle of decoding still lets the state decay (the system is time-invariant), as for the other LTI SSMs (S4, S4D).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.activations import get_activation
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice_ssm._ssm_kernels import SSMState, as_complex, diagonal_scan
from edifice_ssm.configs.gss import GSSConfig

__all__ = ["GSS", "GSSMixer", "SimplifiedDSS", "lecun_normal_"]

#: Flax's truncated normal is cut at ±2 standard deviations; this rescales it back to unit variance.
_TRUNC_STD = 0.8796256610342398


@torch.no_grad()
def lecun_normal_(weight: Tensor) -> Tensor:
    """Flax's ``lecun_normal`` in place: truncated normal (±2σ) with variance ``1 / fan_in`` (``weight [out, in]``)."""
    std = weight.shape[-1] ** -0.5 / _TRUNC_STD
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class SimplifiedDSS(nn.Module):
    """GSS's simplified DSS over ``H`` channels: ``[B, T, H] -> [B, T, H]``, LayerNorm, DSS-EXP kernel, ``D`` skip."""

    def __init__(self, d_model: int, d_state: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        if d_model <= 0 or d_state <= 0:
            raise ValueError(f"SimplifiedDSS: d_model and d_state must be > 0, got {d_model} and {d_state}")
        self.d_model, self.d_state = d_model, d_state
        self.norm = get_norm("layernorm", d_model, eps=eps)
        self.lambda_re = nn.Parameter(torch.empty(d_state))  # Re Λ = -exp(λ_re)
        self.lambda_im = nn.Parameter(torch.empty(d_state))  # Im Λ = exp(λ_im)
        self.W = nn.Parameter(torch.empty(d_model, d_state, 2))  # complex W [H, N] as (re, im)
        self.D = nn.Parameter(torch.empty(d_model))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation (the paper's choice for language modelling): every parameter ~ N(0, 1)."""
        self.norm.reset_parameters()  # type: ignore[operator]
        for p in (self.lambda_re, self.lambda_im, self.W, self.D):
            nn.init.normal_(p)

    def eigenvalues(self) -> Tensor:
        """``Λ [N]`` complex64: ``-exp(λ_re) + i exp(λ_im)``, always in the open left half-plane."""
        return torch.complex(-torch.exp(self.lambda_re.float()), torch.exp(self.lambda_im.float()))

    def output_weights(self) -> Tensor:
        """``W̄ = W (e^Λ - 1) / Λ [H, N]`` complex64: the readout of the diagonal recurrence (DSS-EXP, Δ = 1)."""
        lam = self.eigenvalues()
        return as_complex(self.W) * torch.expm1(lam) / lam

    def kernel(self, length: int) -> Tensor:
        """``K [H, L]`` fp32 with ``K_{h,ℓ} = Re Σ_n W̄_{h,n} e^{Λ_n ℓ}`` (Proposition 1(a) with Δ = 1)."""
        lam = self.eigenvalues()
        ell = torch.arange(length, device=lam.device, dtype=torch.float32)
        powers = torch.exp(lam.unsqueeze(-1) * ell)  # (N, L): e^{Λ_n ℓ}
        return (self.output_weights() @ powers).real  # (H, L)

    def forward(self, u: Tensor, *, mask: Tensor | None = None, state: SSMState | None = None) -> Tensor:
        """``u [B, T, H]`` -> ``[B, T, H]``: FFT convolution, or the recurrence from ``state`` (updated in place)."""
        u = self.norm(u)
        if mask is not None:
            u = u * mask.unsqueeze(-1).to(u.dtype)  # padded positions add nothing to the convolution
        if state is None:
            return ops.long_conv(u, self.kernel(u.shape[1]), self.D.float())
        # s_t = e^Λ s_{t-1} + ũ_t for every (h, n), scanned in parallel from the carried state.
        a = torch.exp(self.eigenvalues()).expand(self.d_model, -1)  # (H, N)
        b = u.float().unsqueeze(-1).expand(-1, -1, -1, self.d_state)  # (B, T, H, N)
        s = diagonal_scan(a, b, as_complex(state.h))  # (B, T, H, N) complex
        state.h.copy_(torch.view_as_real(s[:, -1]))
        y = (s * self.output_weights()).sum(-1).real + self.D.float() * u.float()  # (B, T, H)
        return y.to(u.dtype)

    def init_state(
        self, batch_size: int, *, max_len: int | None = None, device: Any = None, dtype: Any = None
    ) -> SSMState:
        """A zero state ``[B, H, N, 2]`` (complex as fp32 pairs; its size does not depend on ``max_len``)."""
        device = self.D.device if device is None else device
        return SSMState(h=torch.zeros(batch_size, self.d_model, self.d_state, 2, device=device))


class GSSMixer(nn.Module):
    """The GSS unit of Fig. 1 without its norm and shortcut: ``[B, T, E] -> [B, T, E]`` (sequence-mixer protocol)."""

    def __init__(
        self,
        d_model: int,
        *,
        expand: int = 4,
        d_ssm: int | None = None,
        d_state: int = 512,
        activation: str = "gelu",
        bias: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if d_model <= 0 or expand <= 0:
            raise ValueError(f"GSSMixer: d_model and expand must be > 0, got {d_model} and {expand}")
        F, H = expand * d_model, d_ssm if d_ssm is not None else max(1, d_model // 4)
        self.d_model, self.d_inner, self.d_ssm = d_model, F, H
        self.v_proj = nn.Linear(d_model, F, bias=bias)  # the gate branch v
        self.u_proj = nn.Linear(d_model, H, bias=bias)  # the reduced branch u
        self.activation = get_activation(activation)
        self.dss = SimplifiedDSS(H, d_state, eps=eps)
        self.uc_proj = nn.Linear(H, F, bias=bias)  # back up to F: uc
        self.out_proj = nn.Linear(F, d_model, bias=bias)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: GSSConfig) -> GSSMixer:
        """The mixer a :class:`GSSConfig` describes."""
        return cls(
            config.d_model,
            expand=config.expand,
            d_ssm=config.ssm_width,
            d_state=config.d_state,
            activation=config.activation,
            bias=config.bias,
            eps=config.norm_eps,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Flax ``Dense`` init for the projections (LeCun normal, zero bias); the DSS's own random init."""
        for linear in (self.v_proj, self.u_proj, self.uc_proj, self.out_proj):
            lecun_normal_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        self.dss.reset_parameters()

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, E]`` -> ``[B, T, E]``; ``mask [B, T]`` (True = valid); ``state`` (SSMState) updated in place."""
        v = self.activation(self.v_proj(x))  # (B, T, F)
        u = self.activation(self.u_proj(x))  # (B, T, H)
        y = self.dss(u, mask=mask, state=state)  # (B, T, H): linear in u
        uc = self.uc_proj(y)  # (B, T, F)
        return self.out_proj(uc * v)  # type: ignore[no-any-return]

    def init_state(self, batch_size: int, **kwargs: Any) -> SSMState:
        """The DSS's zero state (``max_len`` is ignored: the state has a constant size)."""
        return self.dss.init_state(batch_size, **kwargs)


class GSS(SequenceBackbone):
    """GSS sequence model: ``n_layers`` pre-norm residual GSS layers (``x + GSS(LayerNorm(x))``), final LayerNorm."""

    config_class: ClassVar[type[ArchConfig]] = GSSConfig
    config: GSSConfig

    def __init__(self, config: GSSConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """``shortcut + GSS(norm(x))`` (Fig. 1); the layer has no separate feed-forward."""
        c = self.config
        return TransformerBlock(
            c.d_model, GSSMixer.from_config(c), None, norm="layernorm", norm_eps=c.norm_eps, dropout=c.dropout
        )

    def build_norm(self) -> nn.Module:
        """The final LayerNorm."""
        return get_norm("layernorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each layer's own init; Flax-style embeddings ``N(0, 1/d_model)`` and a LeCun-normal LM head."""
        for layer in self.layers:
            layer.reset_parameters()  # type: ignore[operator]
        self.norm.reset_parameters()  # type: ignore[operator]
        if self.embed_tokens is not None:
            nn.init.normal_(self.embed_tokens.weight, std=1 / math.sqrt(self.config.d_model))
        if isinstance(self.input_proj, nn.Linear):
            self.input_proj.reset_parameters()
        if self.lm_head is not None and not self.config.tie_embeddings:
            lecun_normal_(self.lm_head.weight)
