"""Differential Transformer: attention as the difference of two softmax maps.

Ye et al. (2025), "Differential Transformer", ICLR 2025, https://arxiv.org/abs/2410.05258. Implemented:

* eq. (1): ``[Q1; Q2] = X W^Q``, ``[K1; K2] = X W^K``, ``V = X W^V``;
  ``DiffAttn(X) = (softmax(Q1 K1^T / sqrt(d)) - λ softmax(Q2 K2^T / sqrt(d))) V``, causal, with RoPE on every
  query/key head (the authors' code);
* eq. (2): ``λ = exp(λ_q1 · λ_k1) - exp(λ_q2 · λ_k2) + λ_init``, one λ per layer shared by its heads, the four
  vectors of size ``d`` drawn from N(0, 0.1²) (authors' code);
* ``λ_init = 0.8 - 0.6 exp(-0.3 (l - 1))`` for layer ``l = 1..L`` (§2.1);
* eq. (3): ``head_i = DiffAttn(X; W_i^Q, W_i^K, W_i^V, λ)``, ``head_i' = (1 - λ_init) LN(head_i)`` with LN the per-head
  normalisation, ``MultiHead(X) = Concat(head_1'..head_h') W^O``; the authors' released code uses RMSNorm over each
  head's ``2d`` channels (eps 1e-5, one gain shared by the heads), which is what runs here.

Layout (the authors' ``multihead_diffattn.py``): ``q_proj`` gives ``2h`` heads of size ``d`` where heads ``2i`` and
``2i + 1`` are ``Q1`` and ``Q2`` of differential head ``i``; ``k_proj`` likewise for the ``2 h_kv`` key heads;
``v_proj`` gives ``h_kv`` value heads of ``2d``. With grouped key/value heads, query head ``c`` reads key head
``c // (h / h_kv)`` as in the authors' ``repeat_kv`` (so for ``h / h_kv >= 2`` both maps of a pair read one key
head). The KV cache stores the value heads split in two halves of ``d`` so one cache of ``2 h_kv`` heads holds both.

Deviations: the catalogue row mentions a "V2 simplification"; this is the ICLR 2025 paper's architecture. The rest
of the stack (SwiGLU FFN, pre-RMSNorm, Llama init N(0, 0.02)) is ``decoder_only``'s, as in the paper's §3 setup.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice_attention._attention_variants import VariantAttention
from edifice_attention.configs.diff_transformer import DiffTransformerConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["DiffAttention", "DiffTransformer", "lambda_init_for_layer"]


def lambda_init_for_layer(index: int) -> float:
    """§2.1: ``λ_init = 0.8 - 0.6 exp(-0.3 (l - 1))`` for the 1-based layer ``l = index + 1``."""
    return 0.8 - 0.6 * math.exp(-0.3 * index)


class DiffAttention(VariantAttention):
    """Differential multi-head attention (eq. 1-3) over ``x [B, T, d_model]``, with RoPE and a KV cache."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        lambda_init: float,
        lambda_std: float = 0.1,
        head_norm_eps: float = 1e-5,
        n_kv_heads: int | None = None,
        **kwargs: Any,
    ) -> None:
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        # Two query/key heads of size d per differential head; v_proj's 2 h_kv * d outputs are h_kv heads of 2d.
        super().__init__(d_model, 2 * n_heads, n_kv_heads=2 * n_kv_heads, **kwargs)
        self.n_diff_heads = n_heads
        self.lambda_init = lambda_init
        self.lambda_std = lambda_std
        d = self.head_dim
        self.lambda_q1 = nn.Parameter(torch.zeros(d))
        self.lambda_k1 = nn.Parameter(torch.zeros(d))
        self.lambda_q2 = nn.Parameter(torch.zeros(d))
        self.lambda_k2 = nn.Parameter(torch.zeros(d))
        self.head_norm = get_norm("rmsnorm", 2 * d, eps=head_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear defaults, unit head-norm gain and λ vectors from N(0, lambda_std²) (authors' code)."""
        super().reset_parameters()
        if hasattr(self, "head_norm"):
            self.head_norm.reset_parameters()  # type: ignore[operator]
            for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
                nn.init.normal_(p, mean=0.0, std=self.lambda_std)

    def lambda_full(self) -> Tensor:
        """Eq. (2): ``λ = exp(λ_q1 · λ_k1) - exp(λ_q2 · λ_k2) + λ_init`` (a 0-d tensor, fp32)."""
        first = torch.exp(torch.dot(self.lambda_q1.float(), self.lambda_k1.float()))
        second = torch.exp(torch.dot(self.lambda_q2.float(), self.lambda_k2.float()))
        return first - second + self.lambda_init

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **masking: Any) -> Tensor:
        """q ``[B, 2h, T, d]``, k and v ``[B, 2h_kv, L, d]`` -> the normalised differential heads ``[B, h, T, 2d]``."""
        B, Hk2, L, d = v.shape
        T = q.shape[2]
        # Value head i is the two halves 2i, 2i+1 side by side; each of its 2 * (h / h_kv) query heads reads it.
        v2 = v.view(B, Hk2 // 2, 2, L, d).permute(0, 1, 3, 2, 4).reshape(B, Hk2 // 2, L, 2 * d)
        v2 = v2.repeat_interleave(2, dim=1)  # (B, 2h_kv, L, 2d): query head c reads key head c // G and this head
        maps: Tensor = ops.sdpa(
            q,
            k,
            v2,
            scale=self.scale,
            softcap=self.softcap,
            dropout_p=self.dropout if self.training else 0.0,
            **masking,
        )  # (B, 2h, T, 2d): softmax(Q_c K_c^T) V for every query head c
        maps = maps.view(B, self.n_diff_heads, 2, T, 2 * d)
        diff = maps[:, :, 0] - self.lambda_full().to(maps.dtype) * maps[:, :, 1]  # eq. (1), (B, h, T, 2d)
        out: Tensor = self.head_norm(diff) * (1.0 - self.lambda_init)  # eq. (3)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, diff_heads={self.n_diff_heads}, lambda_init={self.lambda_init:.4g}"


class DiffTransformer(DecoderOnly):
    """The ``decoder_only`` stack with :class:`DiffAttention` mixers (see module doc)."""

    config_class: ClassVar[type[ArchConfig]] = DiffTransformerConfig
    config: DiffTransformerConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s differential attention, with the paper's depth-dependent ``λ_init``."""
        c = self.config
        kwargs = self.attention_kwargs()
        lambda_init = lambda_init_for_layer(index) if c.lambda_init is None else c.lambda_init
        return DiffAttention(
            kwargs.pop("d_model"),
            kwargs.pop("n_heads"),
            lambda_init=lambda_init,
            lambda_std=c.lambda_std,
            head_norm_eps=c.head_norm_eps,
            **kwargs,
        )
