"""Mamba-3: a selective SSM with the exponential-trapezoidal rule, a rotary (complex) state and MIMO updates.

Each layer is a pre-norm residual block ``h + Mixer(RMSNorm(h))`` (optionally followed by a SwiGLU MLP block) whose
mixer is the Mamba-3 block: one ``in_proj`` gives the gate ``z``, the input ``x``, ``r`` keys ``B`` and queries
``C`` per group of heads, and per head a step size, a decay rate and a trapezoid weight, plus rotation frequencies;
there is no short convolution. ``B`` and ``C`` are RMS-normalised and get a learned per-head bias, rotated by a
data-dependent cumulative angle, and drive a chunked scalar-decay SSM whose state takes ``2r`` rank-one writes per
step (this step's and the previous step's inputs). The output is gated by ``SiLU(z)`` and projected back.

Paper: Aakash Lahoti, Kevin Y. Li, Berlin Chen, Caitlin Wang, Aviv Bick, J. Zico Kolter, Tri Dao and Albert Gu,
"Mamba-3: Improved Sequence Modeling using State Space Principles", ICLR 2026, https://arxiv.org/abs/2603.15569.
The equations, written out in ``docs/design/mamba3.md`` (per head; eq. 1 of the paper is Mamba-2's recurrence,
the special case ``λ = 1``, ``θ = 0``, ``r = 1``)::

    Δ_t = softplus(dt_t + dt_bias),  A_t = min(-softplus(a_t), -A_floor),  λ_t = σ(l_t),  θ_t = π tanh(θ'_t)
    k_{t,j} = RMSNorm(B_{t,j}) + b^B_j,   q_{t,j} = RMSNorm(C_{t,j}) + b^C_j                 (B/C norm and bias)
    φ_t = Σ_{s<=t} Δ_s θ_s;   k̃ = R(φ_t) k,  q̃ = R(φ_t) q        (complex state = data-dependent RoPE on B, C)
    α_t = exp(Δ_t A_t),  β_t = (1 - λ_t) Δ_t α_t,  γ_t = λ_t Δ_t                  (exponential-trapezoidal rule)
    h_t = α_t h_{t-1} + Σ_j (β_t x_{t-1,j} k̃_{t-1,j}^T + γ_t x_{t,j} k̃_{t,j}^T),  x_{t,j} = x_t ⊙ w^x_j   (MIMO)
    y_{t,j} = (h_t q̃_{t,j} + D x_{t,j}) ⊙ SiLU(z_t ⊙ w^z_j),   out = out_proj(Σ_j y_{t,j} ⊙ w^o_j)

The scan is :func:`edifice.ops.mimo_ssd` (Mamba-2's chunked SSD with rank-``2r`` writes; its step loop is the op's
oracle): the trapezoid's two terms are two writes under one decay, the paper's "two SSD calls" fused into one.

Decoding: a layer's state is the SSM state ``[B, H, P, N]``, the last rotated keys ``[B, r, H, N]``, the last input
``[B, H, P]`` and the angle ``φ`` (mod 2π) ``[B, H, S]``, all fp32 and of constant size; :meth:`Mamba3.step`
continues from it and reproduces ``forward`` at every position.

Padding (``attention_mask``): a padded position gets ``Δ = 0`` and ``x = 0``: no decay, no write, no rotation, and
the next position's trapezoid term reads a zero input, so left- and right-padded sequences give the unpadded result.

Initialisation (reference code ``mamba_ssm.modules.mamba3``): ``dt_bias`` the inverse softplus of a log-uniform draw
in ``[dt_min, dt_max]``; B/C biases one; norm gains one; ``D = 1``; MIMO weights ``w^x = w^o = 1/r``, ``w^z = 1``;
linear layers PyTorch's default with the residual-branch outputs scaled by ``1/sqrt(branches)``; the embedding
``N(0, init_std^2)``.

Deviations: the rotation pairs state dimensions ``(2m, 2m + 1)`` for SISO and MIMO alike (the reference MIMO kernel
pairs ``(m, m + N/2)``, an equivalent parameterisation); the reference code's optional gated RMSNorm before
``out_proj`` (``is_outproj_norm``, off by default) is not included.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_ssm.configs.mamba3 import Mamba3Config

__all__ = ["Mamba3", "Mamba3Mixer", "Mamba3State", "rotate_pairs"]

_TWO_PI = 2 * math.pi


@model_output
class Mamba3State:
    """Decoding state of one :class:`Mamba3Mixer`: constant size, fp32, updated in place by each step."""

    ssm: Tensor
    """``[B, H, P, N]``: the SSM state ``h_t`` of every head."""
    k: Tensor
    """``[B, r, H, N]``: the rotated keys of the last position (the trapezoid's previous write)."""
    x: Tensor
    """``[B, H, P]``: the input of the last position (zero before the first and at padding)."""
    angle: Tensor
    """``[B, H, S]``: the cumulative rotation angle ``φ`` of the last position, mod 2π."""


def rotate_pairs(v: Tensor, angle: Tensor) -> Tensor:
    """Rotate the pairs ``(2m, 2m + 1)``, ``m < S``, of ``v [B, T, r, H, N]`` by ``angle [B, T, H, S]``.

    The remaining ``N - 2S`` features pass through. This is the real form of multiplying complex state
    coordinates ``v_{2m} + i v_{2m+1}`` by ``exp(i angle_m)``.
    """
    S = angle.shape[-1]
    if S == 0:
        return v
    rot, rest = v[..., : 2 * S], v[..., 2 * S :]
    even, odd = rot[..., 0::2], rot[..., 1::2]  # (B, T, r, H, S)
    cos, sin = angle.cos().unsqueeze(2), angle.sin().unsqueeze(2)  # (B, T, 1, H, S)
    pairs = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    return torch.cat([pairs, rest], dim=-1)


class Mamba3Mixer(nn.Module):
    """The Mamba-3 token mixer ``[B, T, d_model] -> [B, T, d_model]`` (equations in the module docstring).

    Follows the sequence-mixer protocol: ``mixer(x, *, mask, positions, state)`` and ``init_state(batch_size, ...)``.
    Parameter names follow the reference implementation: ``in_proj`` (``[z, x, B, C, dt, A, λ, θ]``), ``dt_bias``,
    ``B_bias``/``C_bias`` ``[H, r, N]``, ``B_norm``/``C_norm``, ``mimo_x``/``mimo_z``/``mimo_o`` ``[H, r, P]``
    (rank > 1 only), ``D`` and ``out_proj``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        expand: int = 2,
        head_dim: int = 64,
        n_groups: int = 1,
        mimo_rank: int = 1,
        complex_state: bool = True,
        rope_fraction: float = 0.5,
        trapezoidal: bool = True,
        chunk_size: int = 64,
        bias: bool = False,
        norm_eps: float = 1e-5,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        a_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if min(d_model, d_state, expand, head_dim, n_groups, mimo_rank, chunk_size) <= 0:
            raise ValueError(
                "Mamba3Mixer: d_model, d_state, expand, head_dim, n_groups, mimo_rank and chunk_size must be > 0"
            )
        if d_inner % head_dim or (d_inner // head_dim) % n_groups:
            raise ValueError(
                f"Mamba3Mixer: head_dim={head_dim} must divide d_inner={d_inner} and n_groups={n_groups} must divide "
                "the number of heads"
            )
        if rope_fraction not in (0.5, 1.0):
            raise ValueError(f"Mamba3Mixer: rope_fraction must be 0.5 or 1.0, got {rope_fraction}")
        n_angles = int(d_state * rope_fraction) // 2 if complex_state else 0
        if complex_state and n_angles < 1:
            raise ValueError(f"Mamba3Mixer: d_state={d_state} has no pair to rotate at rope_fraction={rope_fraction}")
        self.d_model, self.d_inner, self.d_state, self.head_dim = d_model, d_inner, d_state, head_dim
        self.n_heads, self.n_groups, self.mimo_rank, self.n_angles = d_inner // head_dim, n_groups, mimo_rank, n_angles
        self.complex_state, self.trapezoidal, self.chunk_size = complex_state, trapezoidal, chunk_size
        self.dt_range, self.dt_init_floor, self.a_floor = (dt_min, dt_max), dt_init_floor, a_floor
        H, R, N, P = self.n_heads, mimo_rank, d_state, head_dim
        self.bc_width = R * n_groups * N
        self.split_sizes = [d_inner, d_inner, self.bc_width, self.bc_width, H, H, H, n_angles]
        self.in_proj = nn.Linear(d_model, sum(self.split_sizes), bias=bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.B_bias = nn.Parameter(torch.empty(H, R, N))
        self.C_bias = nn.Parameter(torch.empty(H, R, N))
        self.B_norm = get_norm("rmsnorm", N, eps=norm_eps)
        self.C_norm = get_norm("rmsnorm", N, eps=norm_eps)
        if R > 1:
            self.mimo_x = nn.Parameter(torch.empty(H, R, P))
            self.mimo_z = nn.Parameter(torch.empty(H, R, P))
            self.mimo_o = nn.Parameter(torch.empty(H, R, P))
        self.D = nn.Parameter(torch.empty(H))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: Mamba3Config) -> Mamba3Mixer:
        """The mixer a :class:`Mamba3Config` describes."""
        return cls(
            config.d_model,
            d_state=config.d_state,
            expand=config.expand,
            head_dim=config.head_dim,
            n_groups=config.n_groups,
            mimo_rank=config.mimo_rank,
            complex_state=config.complex_state,
            rope_fraction=config.rope_fraction,
            trapezoidal=config.trapezoidal,
            chunk_size=config.chunk_size,
            bias=config.bias,
            norm_eps=config.norm_eps,
            dt_min=config.dt_min,
            dt_max=config.dt_max,
            dt_init_floor=config.dt_init_floor,
            a_floor=config.a_floor,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference initialisation: log-uniform Δ through ``dt_bias``, unit B/C biases, gains and ``D``, MIMO
        weights ``1/r`` (x and output) and 1 (gate); PyTorch's default for the projections, zero biases."""
        for module in (self.in_proj, self.B_norm, self.C_norm, self.out_proj):
            module.reset_parameters()  # type: ignore[operator]
        for linear in (self.in_proj, self.out_proj):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        log_min, log_max = (math.log(v) for v in self.dt_range)
        dt = torch.exp(torch.rand_like(self.dt_bias) * (log_max - log_min) + log_min).clamp(min=self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        nn.init.ones_(self.B_bias)
        nn.init.ones_(self.C_bias)
        nn.init.ones_(self.D)
        if self.mimo_rank > 1:
            nn.init.constant_(self.mimo_x, 1.0 / self.mimo_rank)
            nn.init.ones_(self.mimo_z)
            nn.init.constant_(self.mimo_o, 1.0 / self.mimo_rank)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Mamba3State:
        """A zero fp32 state (``max_len`` and ``dtype`` are unused: the state has a constant size and stays fp32)."""
        device = self.D.device if device is None else device
        H, P, N, R = self.n_heads, self.head_dim, self.d_state, self.mimo_rank

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(batch_size, *shape, device=device, dtype=torch.float32)

        return Mamba3State(ssm=zeros(H, P, N), k=zeros(R, H, N), x=zeros(H, P), angle=zeros(H, self.n_angles))

    def _rank(self, v: Tensor, weight: str) -> Tensor:
        """``v [B, T, H, P]`` -> ``[B, T, r, H, P]``: the rank-``j`` copies ``v ⊙ w_j`` (just ``v`` when r = 1)."""
        if self.mimo_rank == 1:
            return v.unsqueeze(2)
        w: Tensor = getattr(self, weight)
        return v.unsqueeze(2) * w.transpose(0, 1).to(v.dtype)  # (R, H, P) broadcast over (B, T)

    def _keys(self, raw: Tensor, norm: nn.Module, bias: Tensor) -> Tensor:
        """``raw [B, T, r*G*N]`` -> RMS-normalised, per-head biased keys/queries ``[B, T, r, H, N]``."""
        batch, T = raw.shape[:2]
        v: Tensor = norm(raw.reshape(batch, T, self.mimo_rank, self.n_groups, self.d_state))  # (B, T, R, G, N)
        v = v.repeat_interleave(self.n_heads // self.n_groups, dim=3)  # (B, T, R, H, N): head h reads group h // (H/G)
        return v + bias.transpose(0, 1).to(v.dtype)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: Mamba3State | None = None,
    ) -> Tensor:
        """Mix ``x [B, T, d_model]``; ``mask [B, T]`` marks valid positions; ``state`` is continued and updated."""
        batch, T, _ = x.shape
        H, P = self.n_heads, self.head_dim
        work = torch.promote_types(x.dtype, torch.float32)
        z, xs, Bp, Cp, dd_dt, dd_a, trap, theta = self.in_proj(x).split(self.split_sizes, dim=-1)
        valid = None if mask is None else mask.unsqueeze(-1).to(work)  # (B, T, 1)
        dt = F.softplus(dd_dt.to(work) + self.dt_bias.to(work))  # (B, T, H) step sizes Δ_t
        if valid is not None:
            dt = dt * valid  # Δ = 0 at padding: no decay, no write, no rotation
        A = (-F.softplus(dd_a.to(work))).clamp(max=-self.a_floor)  # (B, T, H) data-dependent decay rate A_t
        log_a = dt * A  # (B, T, H): log α_t
        xs = xs.reshape(batch, T, H, P).to(work)
        if valid is not None:
            xs = xs * valid.unsqueeze(-1)  # a padded position writes nothing, now or as the next "previous" input
        k = self._keys(Bp.to(work), self.B_norm, self.B_bias)  # (B, T, R, H, N)
        q = self._keys(Cp.to(work), self.C_norm, self.C_bias)
        if self.n_angles:
            # φ_t = φ_0 + Σ_{s<=t} Δ_s π tanh(θ'_s), accumulated in fp64 and reduced mod 2π (per head and pair).
            step_angle = dt.unsqueeze(-1) * (math.pi * torch.tanh(theta.to(work))).unsqueeze(2)  # (B, T, H, S)
            phi = step_angle.double().cumsum(dim=1)
            if state is not None:
                phi = phi + state.angle.double().unsqueeze(1)
            angle = torch.remainder(phi, _TWO_PI).to(work)  # (B, T, H, S)
            k, q = rotate_pairs(k, angle), rotate_pairs(q, angle)
        x_rank = self._rank(xs, "mimo_x")  # (B, T, R, H, P)
        if self.trapezoidal:
            lam = torch.sigmoid(trap.to(work))  # (B, T, H) λ_t
            gamma, beta = lam * dt, (1.0 - lam) * dt * torch.exp(log_a)
            prev_x = xs.new_zeros(batch, 1, H, P) if state is None else state.x.unsqueeze(1).to(work)
            prev_k = k.new_zeros(batch, 1, *k.shape[2:]) if state is None else state.k.unsqueeze(1).to(work)
            x_prev = self._rank(torch.cat([prev_x, xs[:, :-1]], dim=1), "mimo_x")  # (B, T, R, H, P): x_{t-1}
            k_prev = torch.cat([prev_k, k[:, :-1]], dim=1)  # (B, T, R, H, N): k̃_{t-1}
            writes = torch.cat([gamma[:, :, None, :, None] * x_rank, beta[:, :, None, :, None] * x_prev], dim=2)
            keys = torch.cat([k, k_prev], dim=2)  # (B, T, 2R, H, N)
        else:  # exponential-Euler (Mamba-2's rule): γ_t = Δ_t, no β term
            writes, keys = dt[:, :, None, :, None] * x_rank, k
        result = ops.mimo_ssd(
            writes,
            log_a,
            keys,
            q,
            chunk_size=self.chunk_size,
            initial_state=None if state is None else state.ssm,
            return_final_state=state is not None,
        )
        if isinstance(result, tuple):
            y, final = result
            assert state is not None
            state.ssm.copy_(final)
            state.x.copy_(xs[:, -1])
            state.k.copy_(k[:, -1])
            if self.n_angles:
                state.angle.copy_(angle[:, -1])
        else:
            y = result  # (B, T, R, H, P)
        y = y + self.D.to(work)[:, None] * x_rank
        y = y * F.silu(self._rank(z.reshape(batch, T, H, P).to(work), "mimo_z"))
        out = y[:, :, 0] if self.mimo_rank == 1 else (y * self.mimo_o.transpose(0, 1).to(work)).sum(dim=2)
        return self.out_proj(out.reshape(batch, T, self.d_inner).to(x.dtype))  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.n_heads}x{self.head_dim}, "
            f"d_state={self.d_state}, n_groups={self.n_groups}, mimo_rank={self.mimo_rank}, "
            f"rotated_pairs={self.n_angles}, trapezoidal={self.trapezoidal}, chunk_size={self.chunk_size}"
        )


class Mamba3(SequenceBackbone):
    """Mamba-3: ``n_layers`` pre-norm residual blocks around a :class:`Mamba3Mixer` (and an optional SwiGLU MLP)."""

    config_class: ClassVar[type[ArchConfig]] = Mamba3Config
    config: Mamba3Config

    def __init__(self, config: Mamba3Config) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """``h + Mixer(RMSNorm(h))``, then ``h + MLP(RMSNorm(h))`` when ``d_ff > 0``."""
        c = self.config
        ffn = GatedFeedForward(c.d_model, c.d_ff, dropout=c.dropout) if c.d_ff else None
        mixer = Mamba3Mixer.from_config(c)
        return TransformerBlock(c.d_model, mixer, ffn, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each layer's own init, N(0, init_std^2) embeddings, and each residual branch's output projection scaled by
        ``1/sqrt(branches)`` (``mamba_ssm``'s ``rescale_prenorm_residual``: one or two branches per layer)."""
        super().reset_parameters()
        c = self.config
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.embed_tokens is not None:
            nn.init.normal_(self.embed_tokens.weight, std=c.init_std)
        branches = c.n_layers * (2 if c.d_ff else 1)
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.mixer, Mamba3Mixer)
            layer.mixer.out_proj.weight.div_(math.sqrt(branches))
            if isinstance(layer.ffn, GatedFeedForward):
                layer.ffn.down_proj.weight.div_(math.sqrt(branches))
