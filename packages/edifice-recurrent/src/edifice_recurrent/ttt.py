"""TTT: sequence layers whose hidden state is a model, trained by self-supervised gradient descent at test time.

Sun, Li, Dalal, Xu, Vikram, Zhang, Dubois, Chen, Wang, Koyejo, Hashimoto & Guestrin (2024), "Learning to (Learn at
Test Time): RNNs with Expressive Hidden States", https://arxiv.org/abs/2407.04620. A TTT layer keeps, per head, an
inner model ``f(·; W)`` whose weights are the hidden state; each token updates them by a gradient step on a
self-supervised reconstruction loss and the output reads the updated model (``variant``: TTT-Linear, a linear inner
model, or TTT-MLP, a two-layer MLP with hidden ``4 · head_dim`` and GELU)::

    ℓ(W; x_t) = ½‖f(θ_K x_t; W) - θ_V x_t‖²                          multi-view reconstruction (eq. 4)
    W_t = W_{t-1} - η ∇ℓ(W_{t-1}; x_t),   z_t = f(θ_Q x_t; W_t)        update and output rules (eqs. 1, 2, 5)
    f(x) = x + LN(f_res(x))                                           LN and residual inside f (§2.7)
    G_t = ∇ℓ(W_{t'}; x_t),   W_t = W_{t'} - η_t Σ_{s=t'+1}^{t} η(x_s) G_s,   t' = t - mod(t, b)
                                                                       mini-batch TTT (§2.4), b = mini_batch_size
    η(x) = η_base σ(θ_lr · x) / head_dim                              learnable inner learning rate (§2.7)

``η_t`` is the reference implementation's per-position factor ``1/i + learnable_i`` (``i`` the position inside the
mini-batch, clamped at 0), which turns the sum into a learnable running mean; both, and ``W_0`` (learnable, §2.7),
are outer-loop parameters. The whole mini-batch is computed at once in the *dual form* (§2.5) by
:func:`edifice.ops.memory_gd`: no per-token weight is materialised, ``Z = a q W - (c ⊙ tril(q Kᵀ)) G`` layer by
layer. ``step`` runs the same mini-batch recurrence one token at a time (the primal form), from a constant-size
state (the inner weights at the mini-batch start and the running gradient sum, §2.4-2.5); they agree.

Backbone (§2.7 and the Appendix's Mamba backbone): each block is ``x + TTT(RMSNorm(x))``, ``x + SwiGLU(RMSNorm(x))``.
With ``backbone="mamba"`` the layer shares one projection for θ_Q and θ_K, followed by separate causal depthwise
convolutions (the temporal convolutions before the TTT layer), and gates the output with ``GELU(x W_g)``
(``output_gate``); ``backbone="transformer"`` uses separate θ_Q, θ_K projections. The TTT output gets a LayerNorm
(``post_norm``) before the gate and the output projection. RoPE (``rope``) rotates q and k by their position *inside
the mini-batch*, as the reference implementation does. Initialisation as the reference implementation:
``N(0, 0.02²)`` linear weights and ``W_0`` (zero biases), ``θ_lr ~ N(0, 0.02²)`` with zero bias, unit inner LN.

Padding: each sequence's valid tokens are moved to the front before the layer (and back after), so mini-batches
start at its first valid token exactly as without padding; ``step`` skips padded tokens.

Deviations: the reference code's optional ``pre_conv`` residual convolution block is not built; its RoPE pairs
features as (i, i + D/2) rather than interleaved (equivalent up to a fixed permutation of learned features). The
default configuration (Mamba backbone: shared q/k with convolutions and the output gate, no ``pre_conv``) therefore
matches neither released config: ttt-lm-jax's ``*-TTT`` configs add ``pre_conv``, and ttt-lm-pytorch's ``TTTConfig``
defaults to the Transformer backbone without a gate (``backbone="transformer", output_gate=False`` here); see
``docs/design/ttt.md``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.blocks.rope import RotaryEmbedding, apply_rotary
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_recurrent._test_time import (
    FastWeightBackbone,
    FastWeightMemory,
    FastWeightState,
    ShortConvs,
    compact,
    restore,
)
from edifice_recurrent.configs.ttt import TTTConfig

__all__ = ["TTT", "TTTLayer", "TTTState"]


@model_output
class TTTState:
    """Decoding state of a :class:`TTTLayer`: constant size, updated in place by each step."""

    conv: Tensor
    """The q and k convolution history ``[B, 2·H·D, conv_size - 1]`` (``[B, 0]`` for the Transformer backbone)."""
    memory: FastWeightState
    """The inner models: weights at the mini-batch start, the mini-batch's gradient sum, tokens seen."""


class TTTLayer(nn.Module):
    """The TTT token mixer ``[B, T, d_model] -> [B, T, d_model]`` (TTT-Linear or TTT-MLP), with ``init_state``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        *,
        variant: str = "linear",
        inner_size: int | None = None,
        mini_batch_size: int = 16,
        base_lr: float = 1.0,
        share_qk: bool = True,
        conv_size: int = 4,
        output_gate: bool = True,
        rope: bool = True,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if variant not in ("linear", "mlp"):
            raise ValueError(f"TTTLayer: variant must be 'linear' or 'mlp', got {variant!r}")
        width = n_heads * head_dim
        self.n_heads, self.head_dim, self.width = n_heads, head_dim, width
        self.mini_batch_size, self.base_lr, self.init_std = mini_batch_size, base_lr, init_std
        self.q_proj = nn.Linear(d_model, width, bias=False)  # θ_Q (and θ_K when shared)
        self.k_proj = None if share_qk else nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)  # θ_V
        self.convs = ShortConvs([width, width], conv_size, bias=True) if share_qk else None  # conv_q, conv_k
        self.rope = RotaryEmbedding(head_dim, base=rope_theta) if rope else None
        self.lr_weight = nn.Parameter(torch.empty(n_heads, d_model))  # θ_lr, one per head
        self.lr_bias = nn.Parameter(torch.empty(n_heads))
        self.token_offset = nn.Parameter(torch.empty(mini_batch_size))  # learnable part of 1/i
        self.memory = FastWeightMemory(
            n_heads,
            head_dim,
            head_dim,
            depth=1 if variant == "linear" else 2,
            hidden=inner_size,
            bias=True,
            activation="gelu_tanh",
            norm=True,
            residual=True,
            norm_eps=norm_eps,
            init_std=init_std,
            chunk_size=mini_batch_size,
            token_scale=True,
            loss="l2",
        )
        self.post_norm = nn.LayerNorm(width, eps=norm_eps)
        self.g_proj = nn.Linear(d_model, width, bias=False) if output_gate else None
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``θ_lr ~ N(0, init_std²)`` with zero bias, no offset on ``1/i``; the inner model's own init."""
        nn.init.normal_(self.lr_weight, std=self.init_std)
        nn.init.zeros_(self.lr_bias)
        nn.init.zeros_(self.token_offset)
        self.memory.reset_parameters()

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TTTState:
        """Zero convolution histories (in ``dtype``) and the inner models at ``W_0`` (fp32); ``max_len`` unused."""
        if self.convs is None:
            conv = torch.zeros(batch_size, 0, device=device, dtype=dtype)
        else:
            conv = self.convs.init_state(batch_size, device=device, dtype=dtype)
        return TTTState(conv=conv, memory=self.memory.init_state(batch_size, device=device))

    def _views(
        self, x: Tensor, in_chunk: Tensor, state: TTTState | None, valid: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """q, k, v ``[B, T, H, D]``, the learning rates η(x) and the per-position factors η_t ``[B, T, H]``."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        xq, v = self.q_proj(x), self.v_proj(x)
        if self.convs is not None:  # Mamba backbone: one projection, two causal convolutions
            q, k = self.convs([xq, xq], None if state is None else state.conv, valid)
        else:
            assert self.k_proj is not None
            q, k = xq, self.k_proj(x)
        q, k, v = (t.view(B, T, H, D) for t in (q, k, v))
        if self.rope is not None:  # positions inside the mini-batch
            cos, sin = self.rope(in_chunk)
            q, k = (apply_rotary(t.transpose(1, 2), cos, sin).transpose(1, 2) for t in (q, k))
        work = torch.promote_types(x.dtype, torch.float32)  # gates in fp32 (fp64 for an fp64 model)
        gate = torch.einsum("btd,hd->bth", x.to(work), self.lr_weight.to(work)) + self.lr_bias.to(work)
        lr = self.base_lr * torch.sigmoid(gate) / D  # η(x_s), (B, T, H)
        scale = (1.0 / (in_chunk + 1).to(work) + self.token_offset[in_chunk].to(work)).clamp_min(0.0)  # η_t
        return q, k, v, lr, scale.unsqueeze(-1).expand(B, T, H)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: TTTState | None = None
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask [B, T]`` marks valid tokens; ``state`` is updated."""
        B, T, _ = x.shape
        C = self.mini_batch_size
        if state is None:
            xs, order = compact(x, mask)  # valid tokens first: mini-batches start at each sequence's first token
            in_chunk = (torch.arange(T, device=x.device) % C).expand(B, T)
            q, k, v, lr, scale = self._views(xs, in_chunk, None, None)
            if mask is not None:
                lr = lr * restore_mask(mask, order)[..., None]  # padded tokens (now last) take no step
            o = self.memory(q, k, v, lr, token_scale=scale)  # (B, T, H, D)
        else:
            xs, order = x, None
            seen = state.memory.count[:, None]  # valid tokens seen so far, per row
            offset = torch.arange(T, device=x.device) if mask is None else mask.long().cumsum(-1) - 1
            in_chunk = (seen + offset).clamp_min(0) % C  # (B, T)
            q, k, v, lr, scale = self._views(xs, in_chunk, state, mask)
            o = self.memory.step(state.memory, q, k, v, lr, token_scale=scale, valid=mask)
        y = self.post_norm(o.reshape(B, T, self.width))
        if self.g_proj is not None:
            y = F.gelu(self.g_proj(xs), approximate="tanh") * y
        out: Tensor = self.o_proj(y)
        return restore(out, order)

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}x{self.head_dim}, mini_batch={self.mini_batch_size}"


def restore_mask(mask: Tensor, order: Tensor | None) -> Tensor:
    """The validity of each position after :func:`compact` (valid ones first), as a float ``[B, T]``."""
    return (mask if order is None else torch.gather(mask, 1, order)).float()


class TTT(FastWeightBackbone):
    """TTT language/sequence model: ``n_layers`` blocks ``x + TTT(RMSNorm(x))``, ``x + SwiGLU(RMSNorm(x))``."""

    config_class: ClassVar[type[ArchConfig]] = TTTConfig
    config: TTTConfig

    def build_mixer(self, index: int) -> nn.Module:
        """The :class:`TTTLayer` of every layer."""
        c = self.config
        return TTTLayer(
            c.d_model,
            c.n_heads,
            c.head_size,
            variant=c.variant,
            inner_size=c.inner_hidden,
            mini_batch_size=c.mini_batch_size,
            base_lr=c.ttt_base_lr,
            share_qk=c.backbone == "mamba",
            conv_size=c.conv_size,
            output_gate=c.output_gate,
            rope=c.rope,
            rope_theta=c.rope_theta,
            norm_eps=c.norm_eps,
            init_std=c.init_std,
        )
