"""H3 (Hungry Hungry Hippos): two state space models and two multiplicative gates in place of attention.

Each layer is a GPT-style pre-norm block, ``h + H3(LayerNorm(h))`` then ``h + MLP(LayerNorm(h))``. The H3 layer
projects the input to ``Q, K, V``, runs ``K`` through a *shift* SSM (a learned short filter: the state is a shift
register of recent inputs, so it can remember a token for the next steps), multiplies by ``V``, runs the product
through a *diagonal* SSM (S4D, long memory) and gates the result with ``Q``. With ``head_dim > 1`` the products are
outer products per head, ``K̄ V^T``, so each head keeps a ``d_h x d_h`` state like linear attention. Both SSMs are
computed as FFT convolutions in training (:func:`edifice.ops.long_conv`) and as recurrences when decoding.
``attention_layers`` makes chosen layers causal softmax attention instead (the paper's "Hybrid H3").

Paper: Daniel Y. Fu, Tri Dao, Khaled K. Saab, Armin W. Thomas, Atri Rudra, Christopher Ré (2023), "Hungry Hungry
Hippos: Towards Language Modeling with State Space Models", ICLR 2023, https://arxiv.org/abs/2212.14052.

Equations (§3.1 and Algorithm 1; per channel, ``N_s = d_shift``, ``N = d_state``, ``H = d_model / d_h`` heads)::

    Q = u W_Q,  K = u W_K,  V = u W_V                                   Algorithm 1, line 1
    SSM_shift:  x_t = A x_{t-1} + B K_t,  K̄_t = C x_t + D K_t           §3.1: A the N_s x N_s shift matrix
                (A_{ij} = 1 iff i = j + 1), B = e_1 fixed, C learned  =>  K̄_t = Σ_{i<N_s} C_i K_{t-i} + D K_t
    KV_t^(h) = K̄_t^(h) (V_t^(h))^T                                      line 5, a d_h x d_h outer product per head
    SSM_diag:   S4D, ZOH:  s_t = Ā s_{t-1} + B̄ KV_t,  y_t = 2 Re(C s_t) + D KV_t   (one SSM per head, shared by
                its d_h² entries; kernel K̄_ℓ = 2 Re Σ_n C_n B̄_n Ā_n^ℓ, S4D §3)
    O_t^(h) = (Q_t^(h))^T SSM_diag(KV)_t^(h)                           line 6
    out = concat_h O^(h) W_O                                            line 8

With ``d_h = 1`` this is ``Q ⊙ SSM_diag(SSM_shift(K) ⊙ V)`` (§3.1). The diagonal SSM is
:class:`edifice_ssm.s4d.S4DSSM` (its parameters, initialisation and Vandermonde kernel), applied here to the
``H d_h²`` product channels.

Decoding: the shift SSM's state is the shift register ``x_t`` without its oldest entry (which the next shift drops):
the last ``N_s - 1`` inputs, stepped by :func:`edifice_ssm._hyena.fir_step`; the diagonal SSM's state is
``s [B, H, d_h, d_h, N/2]`` (complex, fp32), stepped as a parallel scan
(:func:`edifice_ssm._ssm_kernels.diagonal_scan`). Both have a constant size; attention layers keep a KV cache.

Initialisation (the reference code's): the shift SSM's ``C`` as a Conv1d weight (``U(±1/√N_s)``), both ``D`` and
the diagonal SSM as S4D-Lin (``C ~ CN(0, 1)``, ``log Δ ~ U[log dt_min, log dt_max]``); every Linear and embedding
``N(0, 0.02²)`` with zero biases, the MLP's (and attention's) output projection ``N(0, 0.02²/(2 n_layers))``.

Deviations: none in the mathematics. The output channels of a head are laid out ``(h, d_h)``; the reference code
lays them out ``(d_h, h)`` before its output projection (a permutation of ``W_O``'s columns).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import FeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_ssm._hyena import check_mixer_input, fir_step, gpt2_init_
from edifice_ssm._ssm_kernels import as_complex, diagonal_scan
from edifice_ssm.configs.h3 import H3Config
from edifice_ssm.s4d import S4DSSM

__all__ = ["H3", "H3Mixer", "H3State"]


@model_output
class H3State:
    """Decoding state of one :class:`H3Mixer`: constant size, updated in place by each step."""

    shift: Tensor
    """``[B, D, N_s - 1]``: the shift SSM's register (the last ``N_s - 1`` keys, oldest first)."""
    diag: Tensor
    """``[B, H, d_h, d_h, N/2, 2]`` fp32: the diagonal SSM's complex state as ``(re, im)``."""


class H3Mixer(nn.Module):
    """The H3 layer (Algorithm 1) ``[B, T, D] -> [B, T, D]``: causal, stateful, sequence-mixer protocol."""

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        d_shift: int | None = None,
        head_dim: int = 1,
        ssm_init: str = "lin",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        d_shift = d_state if d_shift is None else d_shift
        if min(d_model, d_state, d_shift, head_dim) <= 0 or d_model % head_dim or d_state % 2:
            raise ValueError(
                f"H3Mixer: sizes must be > 0, head_dim must divide d_model and d_state be even; got d_model={d_model}, "
                f"d_state={d_state}, d_shift={d_shift}, head_dim={head_dim}"
            )
        self.d_model, self.d_state, self.d_shift, self.head_dim = d_model, d_state, d_shift, head_dim
        self.n_heads = d_model // head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.shift_C = nn.Parameter(torch.empty(d_model, d_shift))  # C of the shift SSM = its filter taps
        self.shift_D = nn.Parameter(torch.empty(d_model))
        self.ssm = S4DSSM(self.n_heads, d_state, init=ssm_init, discretization="zoh", dt_min=dt_min, dt_max=dt_max)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: H3Config) -> H3Mixer:
        """The H3 layer an :class:`H3Config` describes."""
        return cls(
            config.d_model,
            d_state=config.d_state,
            d_shift=config.shift_size,
            head_dim=config.head_dim,
            ssm_init=config.ssm_init,
            dt_min=config.dt_min,
            dt_max=config.dt_max,
            bias=config.bias,
        )

    def reset_parameters(self) -> None:
        """Linear defaults; shift ``C ~ U(±1/√N_s)`` (Conv1d's init), ``D ~ N(0, 1)``; the S4D SSM's own init."""
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            linear.reset_parameters()
        bound = 1 / math.sqrt(self.d_shift)
        nn.init.uniform_(self.shift_C, -bound, bound)
        nn.init.normal_(self.shift_D)
        self.ssm.reset_parameters()

    def shift_kernel(self) -> Tensor:
        """The shift SSM's kernel ``K_i = C A^i B = C e_{i+1} = C_i`` (``i < N_s``): ``[D, N_s]`` fp32."""
        return self.shift_C.float()

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> H3State:
        """Zero states (``max_len`` unused: both SSM states have a constant size)."""
        device = self.shift_D.device if device is None else device
        dtype = self.q_proj.weight.dtype if dtype is None else dtype
        H, P = self.n_heads, self.head_dim
        return H3State(
            shift=torch.zeros(batch_size, self.d_model, self.d_shift - 1, device=device, dtype=dtype),
            diag=torch.zeros(batch_size, H, P, P, self.d_state // 2, 2, device=device, dtype=torch.float32),
        )

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: H3State | None = None,
    ) -> Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]``; ``mask [B, T]`` marks valid positions; ``state`` is updated in place."""
        check_mixer_input("H3Mixer", x, self.d_model)
        batch, T, _ = x.shape
        H, P = self.n_heads, self.head_dim
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, D) each
        if mask is not None:  # padded keys and values are zero: nothing enters either SSM's history
            keep = mask.unsqueeze(-1).to(x.dtype)
            k, v = k * keep, v * keep
        k = self.shift_ssm(k, state=state)  # SSM_shift(K)
        kv = k.view(batch, T, H, P, 1) * v.view(batch, T, H, 1, P)  # (B, T, H, d_h, d_h): K̄ V^T per head
        y = self.diag_ssm(kv, state=state)  # (B, T, H, d_h, d_h)
        o = torch.einsum("bthij,bthi->bthj", y, q.view(batch, T, H, P))  # Q^T SSM_diag(K̄ V^T) per head
        return self.out_proj(o.reshape(batch, T, self.d_model))  # type: ignore[no-any-return]

    def shift_ssm(self, k: Tensor, *, state: H3State | None = None) -> Tensor:
        """``K̄_t = Σ_{i<N_s} C_i K_{t-i} + D K_t`` for ``k [B, T, D]``: FFT convolution, or the shift register."""
        if state is None:
            return ops.long_conv(k, self.shift_kernel(), self.shift_D.float())
        out, register = fir_step(k, self.shift_kernel(), state.shift, self.shift_D)
        state.shift.copy_(register)
        return out

    def diag_ssm(self, kv: Tensor, *, state: H3State | None = None) -> Tensor:
        """The per-head S4D SSM on every entry of ``kv [B, T, H, d_h, d_h]``: FFT convolution, or the recurrence."""
        batch, T, H, P, _ = kv.shape
        if state is None:
            kernel = self.ssm.kernel(T).repeat_interleave(P * P, 0)  # (H d_h², T): one SSM per head
            skip = self.ssm.D.float().repeat_interleave(P * P)
            return ops.long_conv(kv.reshape(batch, T, H * P * P), kernel, skip).view(batch, T, H, P, P)
        a, b, c = self.ssm.discrete()  # (H, N/2) each: Ā, B̄, C
        shape = (H, P, P, self.d_state // 2)
        kv32 = kv.float()
        drive = b[:, None, None] * kv32.unsqueeze(-1)  # (B, T, H, P, P, N/2): B̄ KV_t
        s = diagonal_scan(a[:, None, None].expand(shape), drive, as_complex(state.diag))  # s_t = Ā s_{t-1} + B̄ KV_t
        state.diag.copy_(torch.view_as_real(s[:, -1]))
        y = 2 * (s * c[:, None, None]).real.sum(-1) + self.ssm.D.float()[:, None, None] * kv32  # 2 Re(C s_t) + D KV_t
        return y.to(kv.dtype)

    def extra_repr(self) -> str:
        heads = f"{self.n_heads}x{self.head_dim}"
        return f"d_model={self.d_model}, heads={heads}, d_state={self.d_state}, d_shift={self.d_shift}"


class H3(SequenceBackbone):
    """H3 language/sequence model: ``n_layers`` pre-norm blocks ``H3 (or attention) -> MLP``, a final LayerNorm."""

    config_class: ClassVar[type[ArchConfig]] = H3Config
    config: H3Config

    def __init__(self, config: H3Config) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """An H3 block, or a causal attention block at ``config.attention_layers``."""
        c = self.config
        mixer: nn.Module
        if index in c.attention_layers:
            mixer = Attention(c.d_model, c.n_heads, bias=c.bias, dropout=c.dropout)
        else:
            mixer = H3Mixer.from_config(c)
        ffn = FeedForward(c.d_model, c.ffn_size, activation=c.activation, bias=True)
        return TransformerBlock(c.d_model, mixer, ffn, norm="layernorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final LayerNorm."""
        return get_norm("layernorm", self.config.d_model, eps=self.config.norm_eps)

    def reset_parameters(self) -> None:
        """Each layer's own init, then GPT-2's on every Linear and embedding (see the module docstring)."""
        super().reset_parameters()
        residual: list[nn.Linear] = []
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.ffn, FeedForward)
            residual.append(layer.ffn.down_proj)
            if isinstance(layer.mixer, Attention):
                residual.append(layer.mixer.o_proj)
        gpt2_init_(self, std=self.config.init_std, n_layers=self.config.n_layers, residual=residual)
