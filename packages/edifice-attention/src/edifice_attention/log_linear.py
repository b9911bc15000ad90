"""Log-Linear Mamba-2: Mamba-2's attention form over a Fenwick-tree partition of the prefix, one weight per level.

Paper: Guo, Yang, Goel, Xing, Dao & Kim (2025), "Log-Linear Attention", https://arxiv.org/abs/2506.04761.

Implemented (per layer; the mechanism is :func:`edifice.ops.log_linear_attention`, whose module doc gives the forms):

* §3, eq. 7: ``O = (Q Kᵀ ⊙ M^S ⊙ M^H) V`` with Mamba-2's decay mask ``M^S_ij = e^{b_i - b_j}`` and the hierarchical
  mask ``M^H_ij = λ_i^{ℓ(i, j)}``, ``ℓ(i, j)`` the Fenwick level of key ``j`` seen from query ``i`` (the prefix is cut
  into ``O(log T)`` buckets of doubling size); chunked in training, a Fenwick-tree of ``L`` matrix states in decoding
  (§3.2), so a decode step costs ``O(log T)`` states, not a growing cache;
* §4, Log-Linear Mamba-2 (the authors' layer, flash-linear-attention's ``LogLinearMamba2``): ``[z, xBC, Δ, dλ] = x
  W_in``; ``xBC = SiLU(Conv1d(xBC))`` split into ``x`` (values, ``H`` heads of ``P``), ``B`` (keys) and ``C``
  (queries, both ``d_state``, one group); ``Δ = softplus(Δ + b_Δ)``, ``g = -e^{A_log} Δ``; the level weights
  ``λ_t^{h,ℓ} = softplus(Λ_{h,ℓ} · dλ_t^{h,ℓ})`` (data-dependent, per head and level); ``y = LogLinAttn(q = C, k = B,
  v = Δ x, g, λ) + D x``; ``y = RMSNorm(y ⊙ SiLU(z))`` (norm after the gate); ``W_out``. Pre-norm residual blocks
  without a feed-forward (Mamba-2 blocks; ``d_ff`` adds one).
* Initialisation as the authors': ``Λ = 1``, ``D = 1``, ``A_log = log(1..H)``, ``Δ`` log-uniform in
  ``[dt_min, dt_max]`` through the inverse softplus of ``b_Δ``.

With every ``λ`` equal the layer is Mamba-2 (times that constant): the test suite checks it.

Deviations: the number of levels is a config field (``num_levels``, fla fixes 15 for 16k positions); positions past
``2^(L-1)`` share the top level instead of failing. One group of ``B``/``C``. Padding masks are not supported
(``variable_length=False``): the buckets hang on absolute positions, so a left-padded row would be cut differently.
An initial state before the first position sits at the top level (docs/design/log_linear.md).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.dtypes import upcast
from edifice.outputs import model_output
from edifice_attention._linear_attention import MixerStackBackbone
from edifice_attention.configs.log_linear import LogLinearConfig

__all__ = ["LogLinear", "LogLinearMamba2Mixer", "LogLinearState"]


@model_output
class LogLinearState:
    """Decoding state of one log-linear Mamba-2 mixer: ``O(log T)`` matrices, updated in place by each step."""

    conv: Tensor
    """The short-convolution history ``[B, inner + 2 d_state, conv_size - 1]``."""
    levels: Tensor
    """The Fenwick states ``[B, H, num_levels, d_state, head_dim]`` in fp32 (level 0: the last token)."""


class LogLinearMamba2Mixer(nn.Module):
    """The Log-Linear Mamba-2 token mixer ``[B, T, d_model] -> [B, T, d_model]`` of the module doc."""

    def __init__(self, config: LogLinearConfig) -> None:
        super().__init__()
        c = self.config = config
        H, L, N, inner = c.n_heads, c.num_levels, c.d_state, c.inner_dim
        self.sizes = [inner, inner + 2 * N, H, H * L]  # z, xBC, Δ, dλ
        self.in_proj = nn.Linear(c.d_model, sum(self.sizes), bias=c.use_bias)
        self.conv = CausalDepthwiseConv1d(inner + 2 * N, c.conv_size, bias=c.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.level_weight = nn.Parameter(torch.empty(H, L))  # Λ (fla: ``L``)
        self.D = nn.Parameter(torch.empty(H))
        self.norm = get_norm("rmsnorm", inner, eps=c.norm_eps)
        self.out_proj = nn.Linear(inner, c.d_model, bias=c.use_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation (module doc); projections N(0, init_std) with zero biases."""
        c = self.config
        for lin in (self.in_proj, self.out_proj):
            nn.init.normal_(lin.weight, std=c.init_std)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.conv.reset_parameters()
        self.norm.reset_parameters()  # type: ignore[operator]
        with torch.no_grad():
            log_dt = torch.rand(c.n_heads) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
            dt = log_dt.exp().clamp_min(c.dt_init_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log.copy_(torch.log(torch.arange(1, c.n_heads + 1, dtype=torch.float32)))
            self.level_weight.fill_(1.0)
            self.D.fill_(1.0)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LogLinearState:
        """Zero conv history and zero Fenwick states: ``num_levels`` matrices whatever the length."""
        c = self.config
        device = self.out_proj.weight.device if device is None else device
        levels = torch.zeros(
            batch_size, c.n_heads, c.num_levels, c.d_state, c.head_dim, device=device, dtype=torch.float32
        )
        return LogLinearState(conv=self.conv.init_state(batch_size, device=device, dtype=dtype), levels=levels)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: LogLinearState | None = None,
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``state`` (with ``positions``) continues a sequence."""
        c = self.config
        B, T, _ = x.shape
        H, L, N, P = c.n_heads, c.num_levels, c.d_state, c.head_dim
        if mask is not None and not bool(mask.all()):
            raise ValueError(
                "log_linear: padding masks are not supported (the Fenwick buckets follow absolute positions)"
            )
        z, xbc, dt, dl = torch.split(self.in_proj(x), self.sizes, dim=-1)
        if state is None:
            xbc = F.silu(self.conv(xbc))
        else:
            y_conv, history = self.conv.step(xbc, state.conv)
            state.conv.copy_(history)
            xbc = F.silu(y_conv)
        xs, Bm, Cm = torch.split(xbc, [c.inner_dim, N, N], dim=-1)
        dt = F.softplus(upcast(dt) + upcast(self.dt_bias))  # (B, T, H), fp32 (fp64 kept)
        g = -torch.exp(upcast(self.A_log)) * dt  # log-decay A Δ
        lam = F.softplus(upcast(self.level_weight) * upcast(dl).view(B, T, H, L))  # λ_t^{h,ℓ}
        xh = xs.view(B, T, H, P)
        q = Cm[:, :, None, :].expand(B, T, H, N)
        k = Bm[:, :, None, :].expand(B, T, H, N)
        offset: int | Tensor = 0 if positions is None or state is None else positions[:, 0]
        y, final = ops.log_linear_attention(
            q,
            k,
            xh * dt[..., None].to(xh.dtype),
            g,
            lam,
            scale=1.0,
            initial_state=None if state is None else state.levels,
            offset=offset,
            chunk_size=c.chunk_size,
        )
        if state is not None:
            state.levels.copy_(final)
        y = y + self.D.to(y.dtype)[:, None] * xh
        y = self.norm((upcast(y.flatten(2)) * F.silu(upcast(z))).to(x.dtype))  # norm after the gate
        out: Tensor = self.out_proj(y)
        return out


class LogLinear(MixerStackBackbone):
    """Log-Linear Mamba-2 sequence backbone: pre-norm residual blocks of the log-linear Mamba-2 mixer."""

    config_class: ClassVar[type[ArchConfig]] = LogLinearConfig
    config: LogLinearConfig

    def build_mixer(self, index: int) -> nn.Module:
        """The log-linear Mamba-2 mixer (the same at every depth)."""
        return LogLinearMamba2Mixer(self.config)

    def reset_parameters(self) -> None:
        """The stack's normal init, then each mixer's own (Δ, A, Λ, D must not be overwritten)."""
        super().reset_parameters()
        for module in self.modules():
            if isinstance(module, LogLinearMamba2Mixer):
                module.reset_parameters()


def mixer_kwargs(mixer: LogLinearMamba2Mixer) -> dict[str, Any]:
    """fla ``LogLinearMamba2`` constructor arguments equivalent to ``mixer`` (for the GPU parity test)."""
    c = mixer.config
    return {
        "num_heads": c.n_heads,
        "head_dim": c.head_dim,
        "hidden_size": c.d_model,
        "state_size": c.d_state,
        "expand": c.expand,
        "n_groups": 1,
        "conv_kernel": c.conv_size,
        "use_conv_bias": c.conv_bias,
        "use_bias": c.use_bias,
        "norm_eps": c.norm_eps,
        "chunk_size": 64,
    }
