"""Longhorn: a Mamba-style SSM whose state update is the implicit online-learning step of associative recall.

Longhorn reads a state-space layer as an online learner: at every token the state ``S ∈ R^{E x N}`` (one row per
channel) is updated to fit the new key-value pair ``(k_t, x_t)`` while staying close to ``S_{t-1}``,

    S_t = argmin_S ||S - S_{t-1}||_F² + ||S k_t - x_t||²_{diag(β_t)},                              (the objective)

whose closed-form (implicit, Sherman–Morrison) solution is ``S_t = S_{t-1} - ε_t ⊙ (S_{t-1} k_t - x_t) k_tᵀ`` with
``ε_t = β_t / (1 + β_t k_tᵀk_t)``. Keeping only the diagonal of ``k_t k_tᵀ`` in the transition makes the update
elementwise, hence a parallel linear scan -- the Longhorn recurrence::

    ε_t = β_t / (1 + β_t k_tᵀ k_t)                                  [E]       (step size, one per channel)
    S_t = (1 - ε_t ⊗ k_t^{⊙2}) ⊙ S_{t-1} + (ε_t ⊙ x_t) ⊗ k_t        [E, N]    (the Longhorn update)
    y_t = S_t q_t + D ⊙ x_t                                         [E]

The forget gate ``1 - ε_t ⊗ k_t²`` is derived from the objective: there is no separate decay parameter (Mamba's
``A``), and a step whose key is zero leaves the state untouched. The block around it is Mamba's (Fig. 3): ``x, z =
W_in u``; ``x = SiLU(causal_conv1d(x))``; ``(δ, k, q) = W_x x``; ``β = σ(W_β δ + b_β)``; the recurrence above;
``out = W_out (y ⊙ SiLU(z))``; pre-norm residual blocks with a final norm.

Paper: Bo Liu, Rui Wang, Lemeng Wu, Yihao Feng, Peter Stone, Qiang Liu, "Longhorn: State Space Models are Amortized
Online Learners", ICLR 2025, https://arxiv.org/abs/2407.14207 (§3: the online associative recall objective, its
closed-form update and the diagonal approximation). The official code (github.com/Cranial-XIX/longhorn) computes the
same step (its ``dt_head`` is ``W_β``).

Computation: ``S_t = a_t ⊙ S_{t-1} + b_t`` with ``a_t = 1 - ε_t k_t² ∈ (0, 1]`` and ``b_t = ε_t x_t k_t`` over
``E x N`` fp32 states is the ``edifice.ops.linear_recurrence`` op (a parallel scan, no loop over time); ``step``
continues it from the carried state. Decoding state per layer: the last ``d_conv - 1`` convolution inputs and ``S``
(a :class:`~edifice_ssm.mamba.MambaState`, constant size). Padding sets ``β = 0`` (so ``ε = 0``, ``a = 1``, ``b = 0``)
and zeroes the mixer's input at padded positions: a padded step is the identity.

Initialisation (the official code): PyTorch's default Linear/Conv1d init, every Linear bias zero (so ``β ≈ σ(W_β δ)``
starts near 1/2), ``D = 1``, output projections divided by ``sqrt(n_layers)`` (GPT-2's prenorm rescale), token
embeddings ``N(0, init_std²)``.

Deviation: none in the mathematics; the convolution is the core ``CausalDepthwiseConv1d`` block (weight ``[E, K]``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice_ssm.configs.longhorn import LonghornConfig
from edifice_ssm.mamba import MambaState, reset_ends

__all__ = ["Longhorn", "LonghornMixer", "longhorn_coefficients", "longhorn_scan"]


def longhorn_coefficients(x: Tensor, beta: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, b)`` of the Longhorn update ``S_t = a_t ⊙ S_{t-1} + b_t``, fp32 ``[B, T, E, N]``.

    ``x``, ``beta`` ``[B, T, E]`` (values and per-channel β), ``k`` ``[B, T, N]`` (keys):
    ``ε = β / (1 + β kᵀk)``, ``a = 1 - ε ⊗ k²``, ``b = (ε x) ⊗ k``.
    """
    beta, k = beta.float(), k.float()
    eps = beta / (1 + beta * k.square().sum(-1, keepdim=True))  # (B, T, E)
    a = 1 - eps.unsqueeze(-1) * k.square().unsqueeze(2)  # (B, T, E, N)
    b = (eps * x.float()).unsqueeze(-1) * k.unsqueeze(2)  # (B, T, E, N)
    return a, b


def longhorn_scan(x: Tensor, beta: Tensor, k: Tensor, initial: Tensor | None = None) -> Tensor:
    """Every state ``S_t [B, T, E, N]`` (fp32) of the Longhorn update from ``initial [B, E, N]`` (zeros when None)."""
    a, b = longhorn_coefficients(x, beta, k)
    return ops.linear_recurrence(a, b, initial)


class LonghornMixer(nn.Module):
    """Longhorn's token mixer: ``[B, T, d_model] -> [B, T, d_model]``, causal and stateful (sequence-mixer protocol)."""

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        conv_bias: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if min(d_model, d_state, expand, d_conv) <= 0:
            raise ValueError(
                f"LonghornMixer: d_model, d_state, expand and d_conv must be > 0, got {d_model}, {d_state}, "
                f"{expand}, {d_conv}"
            )
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = E = expand * d_model
        self.dt_rank = R = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv1d = CausalDepthwiseConv1d(E, d_conv, bias=conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * d_state, bias=False)  # (δ, k, q)
        self.beta_proj = nn.Linear(R, E, bias=True)  # β = σ(W_β δ + b_β) (the official code's dt_head)
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: LonghornConfig) -> LonghornMixer:
        """The mixer a :class:`LonghornConfig` describes."""
        return cls(
            config.d_model,
            d_state=config.d_state,
            expand=config.expand,
            d_conv=config.d_conv,
            dt_rank=config.beta_rank,
            conv_bias=config.conv_bias,
            bias=config.bias,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official init: default Linear/Conv1d weights, zero Linear biases (``b_β = 0``), ``D = 1``."""
        for module in (self.in_proj, self.conv1d, self.x_proj, self.beta_proj, self.out_proj):
            module.reset_parameters()
        for linear in (self.in_proj, self.beta_proj, self.out_proj):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        nn.init.ones_(self.D)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MambaState:
        """A zero state: ``conv [B, E, d_conv - 1]`` in ``dtype`` and ``ssm`` ``S [B, E, N]`` in fp32."""
        device = self.D.device if device is None else device
        return MambaState(
            conv=self.conv1d.init_state(batch_size, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask [B, T]`` (True = valid); ``state`` updated in place."""
        keep = None if mask is None else mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        if keep is not None:
            x = x * keep
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, E) each
        if state is None:
            xc = self.conv1d(xs)
        else:
            xc, conv_state = self.conv1d.step(xs, state.conv)
            state.conv.copy_(conv_state)
        xc = F.silu(xc)  # (B, T, E): the values x_t the state regresses
        if keep is not None:
            xc = xc * keep
        delta, k, q = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, T, R|N|N)
        beta = torch.sigmoid(self.beta_proj(delta).float())  # (B, T, E)
        if keep is not None:
            beta = beta * keep  # β = 0 at padding: the step is the identity
        S = longhorn_scan(xc, beta, k, None if state is None else state.ssm)  # (B, T, E, N) fp32
        if state is not None:
            state.ssm.copy_(S[:, -1])
        y = (S * q.float().unsqueeze(2)).sum(-1) + self.D.float() * xc.float()  # (B, T, E): S_t q_t + D x_t
        y = y * F.silu(z.float())
        return self.out_proj(y.to(x.dtype))  # type: ignore[no-any-return]


class Longhorn(SequenceBackbone):
    """Longhorn sequence model: ``n_layers`` pre-norm residual :class:`LonghornMixer` blocks and a final norm."""

    config_class: ClassVar[type[ArchConfig]] = LonghornConfig
    config: LonghornConfig

    def __init__(self, config: LonghornConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """A mixer-only pre-norm residual block: ``h + Mixer(Norm(h))``."""
        c = self.config
        return TransformerBlock(
            c.d_model, LonghornMixer.from_config(c), None, norm=c.norm, norm_eps=c.norm_eps, dropout=c.dropout
        )

    def build_norm(self) -> nn.Module:
        """The final norm (``norm_f``)."""
        return get_norm(self.config.norm, self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each layer's init, ``out_proj`` divided by ``sqrt(n_layers)``, embeddings ``N(0, init_std²)``."""
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.mixer, LonghornMixer)
            layer.reset_parameters()
            layer.mixer.out_proj.weight.div_(math.sqrt(self.config.n_layers))
        reset_ends(self)
