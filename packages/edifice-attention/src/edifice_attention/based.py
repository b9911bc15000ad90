"""Based: linear attention with a second-order Taylor feature map, beside sliding-window attention and short
convolutions.

Paper: Arora, Eyuboglu, Zhang, Timalsina, Alberti, Zinsley, Zou, Rudra & Ré (2024), "Simple linear attention language
models balance the recall-throughput tradeoff", https://arxiv.org/abs/2402.18668; the layer mix and sizes of the
authors' released 360M configuration (HazyResearch/based, ``train/configs/experiment/reference/based-360m.yaml``).

Implemented:

* §3.2, the Taylor feature map: ``φ(x) = [1, x/d^{1/4}, (x ⊗ x)/(√2·√d)]`` on ``d = feature_dim`` (16) per head, so
  ``φ(q)ᵀφ(k) = 1 + qᵀk/√d + (qᵀk)²/(2d)``, the second-order Taylor expansion of ``exp(qᵀk/√d)``. The ``d²`` products
  are kept once per unordered pair (``x_i x_j`` for ``i < j`` scaled by ``1/√d``, ``x_i²`` by ``1/(√2·√d)``): the
  same inner product with ``1 + d + d(d+1)/2`` features (flash-linear-attention's ``TaylorFeatureMap`` does the same);
* §3.2 / eq. 2, causal linear attention with its normaliser, ``y_i = φ(q_i)ᵀ Σ_{j<=i} φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_{j<=i}
  φ(k_j) + ε)`` (``ε = 1e-12``), through ``linear_transformer``'s normalised mixer and
  :func:`edifice.ops.linear_attention` (chunked for a sequence, recurrent for one position; the normaliser is the
  state's extra value column); the state is ``[1 + d + d(d+1)/2, d_v + 1]`` per head, ``d_v = d_model / n_heads``;
* §3.3 and the released config, the other mixers: sliding-window softmax attention (window 256, RoPE;
  :class:`edifice.blocks.attention.Attention` with a ring-buffer KV cache, constant size) and the gated short
  convolution ``BaseConv`` ``y = W_out(SiLU(conv_3(W_1 x)) ⊙ W_2 x)`` (``W_1, W_2`` the halves of a ``4d`` projection
  with biases); layer ``i`` takes ``layer_pattern[i % 5]`` = conv, based, swa, conv, conv (the 360M's layers 1, 6, …
  are Based, 2, 7, … sliding window, the rest convolutions);
* pre-norm RMSNorm residual blocks with a SwiGLU feed-forward of width ``2d``.

Deviations: initialisation is the family's normal(0, 0.02) (the authors' GPT-2-style scaled residual init is not
reproduced); the sliding window counts the query itself among its ``window_size`` keys (Mistral's convention, as
:func:`edifice.ops.sdpa`). fla has no Based model, so there is no checkpoint converter; fla's
``BasedLinearAttention`` layer has this mixer's parameter names and loads directly.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.blocks.attention import Attention
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.rope import RotaryEmbedding
from edifice.config import ArchConfig
from edifice_attention._linear_attention import MixerStackBackbone
from edifice_attention.configs.based import BasedConfig
from edifice_attention.configs.linear_transformer import LinearTransformerConfig
from edifice_attention.linear_transformer import NormalizedLinearAttention

__all__ = ["Based", "BasedLinearAttention", "GatedShortConv", "TaylorFeatureMap"]


class TaylorFeatureMap(nn.Module):
    """``φ(x) = [1, x/d^{1/4}, x_i²/(√2·√d), x_i x_j/√d (i < j)]``: ``φ(q)ᵀφ(k) = 1 + s + s²/2``, ``s = qᵀk/√d``."""

    rows: Tensor
    cols: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        rows, cols = torch.triu_indices(dim, dim, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def width(self) -> int:
        """Number of features, ``1 + d + d(d+1)/2``."""
        return 1 + self.dim + self.dim * (self.dim + 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., width]``."""
        rd = math.sqrt(self.dim)
        ones = torch.ones_like(x[..., :1])
        square = x.square() / (math.sqrt(2.0) * rd)
        cross = x[..., self.rows] * x[..., self.cols] / rd
        return torch.cat([ones, x / math.sqrt(rd), square, cross], -1)


def _mixer_config(c: BasedConfig) -> LinearTransformerConfig:
    """The normalised linear-attention mixer's options: ``feature_dim`` keys and ``d_model/n_heads`` values per head."""
    return LinearTransformerConfig(
        d_model=c.d_model,
        n_heads=c.n_heads,
        expand_k=c.feature_dim * c.n_heads / c.d_model,
        expand_v=1.0,
        normalize=True,
        normalizer_eps=c.normalizer_eps,
        use_output_gate=False,
        output_norm="none",
        chunk_size=c.chunk_size,
    )


class BasedLinearAttention(NormalizedLinearAttention):
    """Based's linear attention: Taylor features of ``feature_dim``-wide q and k, normalised (eq. 2)."""

    def __init__(self, config: BasedConfig) -> None:
        super().__init__(_mixer_config(config))
        assert isinstance(self.feature_map, TaylorFeatureMap)
        self.state_k_dim = self.feature_map.width

    def build_feature_map(self, name: str | None) -> nn.Module | None:
        """The second-order Taylor map on the head's ``feature_dim`` inputs."""
        return TaylorFeatureMap(self.head_k_dim)


class GatedShortConv(nn.Module):
    """The authors' ``BaseConv``: ``W_out(SiLU(conv(W_1 x)) ⊙ W_2 x)`` with a depthwise causal convolution."""

    def __init__(self, config: BasedConfig) -> None:
        super().__init__()
        c = config
        self.d_inner = c.conv_expand * c.d_model // 2
        self.in_proj = nn.Linear(c.d_model, 2 * self.d_inner, bias=c.conv_proj_bias)
        self.conv = CausalDepthwiseConv1d(self.d_inner, c.conv_size, bias=False)
        self.out_proj = nn.Linear(self.d_inner, c.d_model, bias=c.conv_proj_bias)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """The convolution's history ``[B, d_inner, conv_size - 1]`` (zeros)."""
        device = self.out_proj.weight.device if device is None else device
        return self.conv.init_state(batch_size, device=device, dtype=dtype)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Tensor | None = None
    ) -> Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``; pads are zero input (as before the first token)."""
        if mask is not None:
            x = x * mask.to(x.dtype)[..., None]
        u, gate = self.in_proj(x).split(self.d_inner, dim=-1)
        if state is None:
            u = self.conv(u)
        else:
            u, history = self.conv.step(u, state)
            state.copy_(history)
        out: Tensor = self.out_proj(F.silu(u) * gate)
        return out


class Based(MixerStackBackbone):
    """Based backbone: pre-norm blocks of Taylor linear attention, sliding-window attention or gated convolution."""

    config_class: ClassVar[type[ArchConfig]] = BasedConfig
    config: BasedConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s mixer, by ``layer_pattern``."""
        c = self.config
        kind = c.layer_kind(index)
        if kind == "based":
            return BasedLinearAttention(c)
        if kind == "swa":
            head_dim = c.d_model // c.n_heads
            rope = RotaryEmbedding(head_dim, base=c.rope_base)
            return Attention(c.d_model, c.n_heads, window=c.window_size, rope=rope, ring_cache=True)
        return GatedShortConv(c)
