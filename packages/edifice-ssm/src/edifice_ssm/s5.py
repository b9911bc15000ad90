"""S5: one multi-input, multi-output diagonal state space per layer, computed with a parallel scan.

Where S4 runs ``H`` single-input SSMs, S5 runs one MIMO SSM ``x' = A x + B u, y = C x + D u`` with ``u, y ∈ R^H`` and a
latent state of size ``P`` (§3). ``A`` is diagonalised, ``A = V Λ V^{-1}``, and the system is kept in that basis:
``B̃ = V^{-1} B``, ``C̃ = C V`` (§3.2). ``Λ`` starts at the eigenvalues of HiPPO-N (the normal part of HiPPO-LegS),
block-diagonal with ``J`` blocks (§4.1, Appendix B); conjugate symmetry stores ``P/2`` states and gives
``y = 2 Re(C̃ x) + D u``. Each state has its own step size ``Δ_p`` and zero-order hold discretises the system,
``Λ̄ = exp(ΛΔ)``, ``B̄ = Λ^{-1}(Λ̄ - I) B̃`` (§2.2; bilinear as an option). The recurrence
``x_k = Λ̄ x_{k-1} + B̄ u_k`` is computed for all ``k`` at once by a parallel scan (§2.2, §3.3), here
:func:`edifice.ops.linear_recurrence` on real/imaginary pairs; ``step`` continues it from the state. Each layer is
the authors' block (``s5/layers.py``, defaults of ``run_train.py``): ``x + half_glu1(SSM(BatchNorm(x)))`` with
``half_glu1(y) = g * σ(W g), g = GELU(y)``; ``block`` offers their other outputs (``half_glu2``, ``full_glu``,
``gelu``) and the S4 block (``linear``), ``norm``/``norm_position`` their LayerNorm and post-norm (§6, Appendix G).
As in their encoder there is no final norm after the last block.

BatchNorm in a causal, stateful model: in training it normalises with the statistics of the whole batch (all
``B·T`` positions, as the authors' ``axis_name='batch'`` over the vmapped length), so a training step couples the
batch and looks ahead in time -- exactly the authors' training. In evaluation it uses the running statistics, a fixed
per-channel affine map: every position is normalised alone, so ``step`` equals ``forward``, outputs are causal and
samples independent (the contract's checks run in evaluation). Decode and compare in ``eval()``.

Paper: Jimmy T.H. Smith, Andrew Warrington, Scott W. Linderman (2023), "Simplified State Space Layers for Sequence
Modeling", ICLR 2023, https://arxiv.org/abs/2208.04933.

Initialisation, as the authors' ``ssm.py``/``ssm_init.py``: ``B`` Lecun-normal on its shape ``(P, H)`` -- fan-in
``P``, std ``1/√P`` (a truncated normal, as jax's ``lecun_normal``) -- then ``B̃ = V^{-1} B``; ``C`` with real and
imaginary parts Lecun-normal per row (``trunc_standard_normal``: std ``1/√P``), then ``C̃ = C V``; ``D ~ N(0, 1)``;
``log Δ`` uniform in ``[log dt_min, log dt_max]``.

Deviations: ``Re Λ = -exp(·)`` is kept negative by its parameterisation (S5 optionally clips it instead). Padded
positions count in BatchNorm's training statistics (the authors' layer takes no mask either).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.blocks.activations import get_activation
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice_ssm._ssm_kernels import (
    SSMBackbone,
    SSMCore,
    SSMMixer,
    SSMState,
    as_complex,
    bilinear,
    diagonal_scan,
    log_uniform_dt,
    nplr_legs,
    set_complex_,
    zoh,
)
from edifice_ssm.configs.s5 import S5_BLOCKS, S5Config

__all__ = ["S5", "S5SSM", "S5Mixer", "SequenceBatchNorm", "hippo_n_blocks", "lecun_normal"]


def lecun_normal(*shape: int, fan_in: int) -> Tensor:
    """Lecun-normal fp64 on the CPU, as jax's: a normal truncated at ±2σ, rescaled so its std is ``1/√fan_in``."""
    std = fan_in**-0.5 / 0.87962566103423978  # 0.8796...: the std of a standard normal truncated to [-2, 2]
    out = torch.empty(shape, dtype=torch.float64, device="cpu")
    return nn.init.trunc_normal_(out, std=std, a=-2 * std, b=2 * std)


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
        """HiPPO-N blocks for Λ (§4.1); ``B̃ = V* B``, ``C̃ = C V`` with B, Re C, Im C Lecun-normal of std ``1/√P``.

        As the authors' code: ``lecun_normal`` on B's shape ``(P, H)`` (fan-in ``P``) and on each row of C,
        ``(1, P, 2)`` (fan-in ``P``); log-uniform Δ; ``D ~ N(0, 1)``. B and C are drawn from the global RNG on the
        CPU, where their change of basis runs in fp64.
        """
        lam, V = hippo_n_blocks(self.d_state, self.n_blocks)
        H, P = self.d_model, self.d_state
        with torch.no_grad():
            self.log_neg_lambda_re.copy_(torch.log(-lam.real).float())
            self.lambda_im.copy_(lam.imag.float())
            b = lecun_normal(P, H, fan_in=P)
            set_complex_(self.B, V.conj().T @ b.to(V.dtype))
            c = lecun_normal(H, P, 2, fan_in=P)
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


class SequenceBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of ``[B, T, H]`` sequences, statistics over all ``B·T`` positions, in fp32.

    In training it normalises with the batch's statistics (and updates the running ones); in evaluation with the
    running statistics, a per-channel affine map that treats each position alone (see the module docstring).
    """

    def __init__(self, dim: int, eps: float = 1e-5, *, momentum: float = 0.1) -> None:
        super().__init__(dim, eps=eps, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x [B, T, H]`` (or ``[N, H]``); returns the same shape and dtype."""
        if x.shape[-1] != self.num_features:
            raise ValueError(f"SequenceBatchNorm: expected input [..., {self.num_features}], got {list(x.shape)}")
        assert self.running_mean is not None and self.running_var is not None  # track_running_stats is always on
        flat = x.reshape(-1, self.num_features).float()  # (B·T, H): one sample per position
        # Statistics in fp32 whatever the buffers' dtype (a bf16 model keeps bf16 buffers); written back in training.
        mean, var = self.running_mean.float(), self.running_var.float()
        weight, bias = self.weight.float(), self.bias.float()
        y = F.batch_norm(flat, mean, var, weight, bias, self.training, self.momentum or 0.0, self.eps)
        if self.training:
            if mean.data_ptr() != self.running_mean.data_ptr():  # a bf16 buffer: .float() made a copy
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
        return y.reshape(x.shape).to(x.dtype)


class S5Mixer(nn.Module):
    """The authors' S5 layer body after the norm: ``SSM -> GELU -> half-GLU / full GLU / nothing`` (``s5/layers.py``).

    ``half_glu1``: ``g * σ(W g)``; ``half_glu2``: ``y * σ(W g)``; ``full_glu``: ``W1 g * σ(W2 g)``; ``gelu``: ``g``;
    with ``y`` the SSM's output and ``g = Dropout(GELU(y))``. Padded positions are zeroed before the SSM.
    """

    def __init__(self, ssm: SSMCore, d_model: int, *, block: str, activation: str, dropout: float) -> None:
        super().__init__()
        if block not in S5_BLOCKS or block == "linear":
            raise ValueError(f"S5Mixer: block must be one of {S5_BLOCKS[:-1]}, got {block!r}")
        self.ssm, self.block = ssm, block
        self.activation = get_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model) if block == "full_glu" else None  # W1
        self.gate_proj = nn.Linear(d_model, d_model) if block != "gelu" else None  # W (W2 of the full GLU)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, H]`` -> ``[B, T, H]``; with ``state`` (an :class:`SSMState`) the recurrent form, in place."""
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        y = self.ssm(x, state=state)  # (B, T, H)
        g = self.dropout(self.activation(y))
        if self.gate_proj is None:
            return g  # type: ignore[no-any-return]
        gate = torch.sigmoid(self.gate_proj(g))
        if self.out_proj is not None:
            out = self.out_proj(g) * gate
        else:
            out = (g if self.block == "half_glu1" else y) * gate
        return self.dropout(out)  # type: ignore[no-any-return]

    def init_state(self, batch_size: int, **kwargs: Any) -> SSMState:
        """A zero state of the SSM (``max_len`` is ignored: the state has a constant size)."""
        return self.ssm.init_state(batch_size, **kwargs)


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

    def build_layer(self, index: int) -> nn.Module:
        """One residual block: the authors' S5 layer (``block``), or the S4 block for ``block='linear'``."""
        c = self.config
        if c.block == "linear":
            mixer: nn.Module = SSMMixer(
                self.build_ssm(), c.d_model, activation=c.activation, glu=c.glu, dropout=c.dropout
            )
        else:
            mixer = S5Mixer(self.build_ssm(), c.d_model, block=c.block, activation=c.activation, dropout=c.dropout)
        batchnorm = c.norm == "batchnorm"
        layer = TransformerBlock(
            c.d_model,
            mixer,
            None,
            norm="identity" if batchnorm else c.norm,
            norm_eps=c.norm_eps,
            norm_position=c.norm_position,
            dropout=c.dropout,
        )
        if batchnorm:
            layer.mixer_norm = SequenceBatchNorm(c.d_model, eps=c.norm_eps, momentum=c.bn_momentum)
        return layer

    def build_norm(self) -> nn.Module:
        """None: the authors' stack feeds the last block's output straight to pooling and the decoder."""
        return nn.Identity()
