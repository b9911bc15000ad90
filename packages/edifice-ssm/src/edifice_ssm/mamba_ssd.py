"""Mamba-2: a stack of SSD mixers, the selective SSM with a scalar decay per head computed by structured duality.

Dao & Gu (2024), "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
Duality", https://arxiv.org/abs/2405.21060. Each layer is a pre-norm residual block ``h + Mixer(RMSNorm(h))`` whose
mixer is the Mamba-2 block of §7 / Figure 6 (the "parallel" block: every input-dependent parameter comes from one
projection at the block's start)::

    z, xBC, dt = in_proj(u)                                      # (B, T, d_inner), (B, T, d_inner + 2GN), (B, T, H)
    x, B, C   = SiLU(CausalConv1d(xBC))                           # §7: a short conv on x, B and C together
    dt        = softplus(dt + dt_bias);  A = -exp(A_log)         # step size per head and position; scalar decay
    y         = SSD(x, dt, A, B, C) + D x                         # eq. 1 with A_t = exp(dt_t A) I, chunked (§6)
    out       = out_proj(RMSNorm_G(y * SiLU(z)))                 # §7: extra normalisation before the output

The SSD layer is :func:`edifice.ops.ssd` (chunked: intra-chunk quadratic form plus an inter-chunk recurrence, §6;
its step-by-step recurrence is the op's naive oracle). B and C have ``n_groups`` groups shared by consecutive heads
(the multi-head patterns of §7); the gated RMSNorm normalises each group separately, as the
reference implementation does (``RMSNormGated(group_size=d_inner / n_groups, norm_before_gate=False)``).

Decoding: a layer's state is the convolution's last ``d_conv - 1`` inputs and the SSM state ``[B, H, P, N]`` (fp32),
both of constant size; :meth:`MambaSSD.step` continues from it and reproduces ``forward`` at every position.

Padding (``attention_mask``): a padded position enters the convolution as a zero input and gets ``dt = 0``, which is
an identity step of the recurrence (no decay, no write), so left- and right-padded sequences give the unpadded
result at their valid positions (prompts to be continued by ``step`` should be left-padded).

Initialisation (§7 and the reference code): ``A = -U(1, 16)`` stored as ``A_log``; ``dt`` log-uniform in
``[dt_min, dt_max]`` (floored) stored through the inverse softplus in ``dt_bias``; ``D = 1``; norm gains one; linear
and convolution layers PyTorch's defaults with ``out_proj`` scaled by ``1/sqrt(n_layers)`` (GPT-2's residual rule, as
``mamba_ssm`` does); the token embedding ``N(0, init_std^2)``.

Deviations: the reference code's optional ``d_ssm < d_inner`` (part of the inner stream as a gated MLP), its
``dt_limit`` clamp and learnable initial states are not included; the original Edifice options ``training_mode``
and ``structured_mask`` are not either (the SSD form here is always the paper's chunked algorithm, whose result does
not depend on ``chunk_size``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_ssm.configs.mamba_ssd import MambaSSDConfig

__all__ = ["GatedRMSNorm", "Mamba2Mixer", "Mamba2State", "MambaSSD"]


@model_output
class Mamba2State:
    """Decoding state of one :class:`Mamba2Mixer`; both tensors have a constant size and are updated in place."""

    conv: Tensor
    """``[B, d_inner + 2 G N, d_conv - 1]``: the last inputs of the causal convolution (x, B and C channels)."""
    ssm: Tensor
    """``[B, H, P, N]`` fp32: the SSD state ``h_t`` of every head."""


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x * SiLU(z)) * weight`` over groups of ``group_size`` features (Mamba-2 §7, gate before norm)."""

    def __init__(self, dim: int, *, group_size: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        group_size = dim if group_size is None else group_size
        if dim <= 0 or group_size <= 0 or dim % group_size:
            raise ValueError(f"GatedRMSNorm: group_size must divide dim > 0, got dim={dim}, group_size={group_size}")
        self.dim = dim
        self.group_size = group_size
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit gain."""
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """Gate ``x [..., dim]`` with ``SiLU(z)``, RMS-normalise each group in fp32, scale; returns x's dtype."""
        out: Tensor = ops.gated_rms_norm(x, z, self.weight, self.eps, self.group_size)
        return out

    def extra_repr(self) -> str:
        return f"{self.dim}, group_size={self.group_size}, eps={self.eps}"


class Mamba2Mixer(nn.Module):
    """The Mamba-2 token mixer ``[B, T, d_model] -> [B, T, d_model]`` (see the module docstring for the equations).

    Follows the sequence-mixer protocol: ``mixer(x, *, mask, positions, state)`` and ``init_state(batch_size, ...)``.
    Parameter names match the reference implementation (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``,
    ``norm``, ``out_proj``); ``in_proj`` produces ``[z, x, B, C, dt]`` in that order.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        head_dim: int = 64,
        n_groups: int = 1,
        chunk_size: int = 256,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        a_init_range: tuple[float, float] = (1.0, 16.0),
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if d_inner % head_dim or (d_inner // head_dim) % n_groups:
            raise ValueError(
                f"Mamba2Mixer: head_dim={head_dim} must divide d_inner={d_inner} and n_groups={n_groups} must divide "
                "the number of heads"
            )
        self.d_model, self.d_inner, self.d_state, self.head_dim = d_model, d_inner, d_state, head_dim
        self.n_heads, self.n_groups, self.chunk_size = d_inner // head_dim, n_groups, chunk_size
        self.dt_range, self.dt_init_floor, self.a_init_range = (dt_min, dt_max), dt_init_floor, a_init_range
        self.conv_dim = d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + self.n_heads, bias=bias)
        self.conv1d = CausalDepthwiseConv1d(self.conv_dim, d_conv, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(d_inner, group_size=d_inner // n_groups, eps=norm_eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A = -U(a_init_range), dt log-uniform in dt_range through the inverse softplus, D = 1 (§7, reference code)."""
        for module in (self.in_proj, self.conv1d, self.norm, self.out_proj):
            module.reset_parameters()
        with torch.no_grad():
            low, high = self.a_init_range
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(low, high).log())
            log_min, log_max = (math.log(v) for v in self.dt_range)
            dt = torch.exp(torch.rand_like(self.dt_bias) * (log_max - log_min) + log_min).clamp(min=self.dt_init_floor)
            # softplus^-1(dt) = dt + log(1 - exp(-dt)), so that softplus(dt_bias) = dt at initialisation.
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            nn.init.ones_(self.D)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Mamba2State:
        """Zero convolution history (in ``dtype``) and zero fp32 SSM state; ``max_len`` is unused (constant size)."""
        device = self.A_log.device if device is None else device
        ssm = torch.zeros(batch_size, self.n_heads, self.head_dim, self.d_state, device=device, dtype=torch.float32)
        return Mamba2State(conv=self.conv1d.init_state(batch_size, device=device, dtype=dtype), ssm=ssm)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: Mamba2State | None = None,
    ) -> Tensor:
        """Mix ``x [B, T, d_model]``; ``mask [B, T]`` marks valid positions; ``state`` is continued and updated."""
        batch, T, _ = x.shape
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        valid = None if mask is None else mask.unsqueeze(-1)  # (B, T, 1)
        if valid is not None:
            xbc = xbc * valid  # a padded position enters the convolution as the zero history does
        if state is None:
            xbc = self.conv1d(xbc)
        else:
            xbc, conv_state = self.conv1d.step(xbc, state.conv)
            state.conv.copy_(conv_state)
        groups_width = self.n_groups * self.d_state
        xs, B, C = torch.split(F.silu(xbc), [self.d_inner, groups_width, groups_width], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, T, H), fp32 step sizes
        if valid is not None:
            dt = dt * valid  # dt = 0: no decay and no write, the state passes through padding unchanged
        A = -torch.exp(self.A_log.float())  # (H,) negative: exp(dt A) in (0, 1)
        result = ops.ssd(
            xs.reshape(batch, T, self.n_heads, self.head_dim),
            dt,
            A,
            B.reshape(batch, T, self.n_groups, self.d_state),
            C.reshape(batch, T, self.n_groups, self.d_state),
            chunk_size=self.chunk_size,
            D=self.D,
            initial_state=None if state is None else state.ssm,
            return_final_state=state is not None,
        )
        if isinstance(result, tuple):
            y, final = result
            assert state is not None
            state.ssm.copy_(final)
        else:
            y = result
        y = self.norm(y.reshape(batch, T, self.d_inner), z)  # (B, T, d_inner)
        return self.out_proj(y)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.n_heads}x{self.head_dim}, "
            f"d_state={self.d_state}, n_groups={self.n_groups}, chunk_size={self.chunk_size}"
        )


class MambaSSD(SequenceBackbone):
    """Mamba-2: ``n_layers`` pre-norm residual blocks ``h + Mamba2Mixer(RMSNorm(h))``, a final RMSNorm, optional head.

    Each layer is a :class:`~edifice.blocks.transformer.TransformerBlock` with ``mixer_norm`` and ``mixer`` (no FFN).
    """

    config_class: ClassVar[type[ArchConfig]] = MambaSSDConfig
    config: MambaSSDConfig

    def __init__(self, config: MambaSSDConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """One residual block around a :class:`Mamba2Mixer`."""
        c = self.config
        mixer = Mamba2Mixer(
            c.d_model,
            d_state=c.d_state,
            d_conv=c.d_conv,
            expand=c.expand,
            head_dim=c.head_dim,
            n_groups=c.n_groups,
            chunk_size=c.chunk_size,
            conv_bias=c.conv_bias,
            bias=c.bias,
            norm_eps=c.norm_eps,
            dt_min=c.dt_min,
            dt_max=c.dt_max,
            dt_init_floor=c.dt_init_floor,
            a_init_range=(c.a_init_min, c.a_init_max),
        )
        return TransformerBlock(c.d_model, mixer, None, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm (``norm_f`` in the reference code)."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    def reset_parameters(self) -> None:
        """Every layer's own initialisation, then N(0, init_std^2) embeddings, zero linear biases and
        ``out_proj / sqrt(n_layers)`` (one residual branch per layer, ``mamba_ssm``'s ``rescale_prenorm_residual``)."""
        super().reset_parameters()
        with torch.no_grad():
            if self.embed_tokens is not None:
                nn.init.normal_(self.embed_tokens.weight, std=self.config.init_std)
            for module in self.modules():
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
                if isinstance(module, Mamba2Mixer):
                    module.out_proj.weight.div_(math.sqrt(self.config.n_layers))
