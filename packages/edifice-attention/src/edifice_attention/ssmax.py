"""Scalable-Softmax (SSMax) attention: logits scaled by ``s log n`` so attention does not fade with length.

Nakanishi (2025), "Scalable-Softmax Is Superior for Attention", https://arxiv.org/abs/2501.19399. Implemented:
``SSMax(z)_i = n^{s z_i} / sum_j n^{s z_j} = softmax((s log n) z)_i`` (eq. 3) for the scores ``z = q k^T / sqrt(d)``
of each query, with ``n`` the number of keys that query attends (its position + 1 under the causal mask, at most
``window`` with a sliding window, counted over valid tokens with padding) and ``s`` a learnable scalar per head and
layer (§3), optionally with a learnable bias ``b``: ``(s log n + b) z`` (§3, the variant the paper reports trains
faster but generalises worse in length; off by default). Scaling the logits is scaling each query by ``s log n + b``,
so the attention itself is ordinary softmax attention through :func:`edifice.ops.sdpa` (its fused paths included).
The rest is the ``decoder_only`` stack.

Deviations: ``s`` starts at 0.43 (the value of the paper's Figure 1; the paper does not fix an initialisation here),
configurable as ``ssmax_s_init``; ``b`` starts at 0.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice_attention._attention_variants import VariantAttention
from edifice_attention.configs.ssmax import SSMaxConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["SSMax", "SSMaxAttention"]


class SSMaxAttention(VariantAttention):
    """Causal softmax attention whose query at a position that sees ``n`` keys is scaled by ``s_h log n (+ b_h)``."""

    def __init__(self, *args: Any, s_init: float = 0.43, learn_bias: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.s_init = s_init
        self.ssmax_s = nn.Parameter(torch.full((self.n_heads,), float(s_init)))
        self.ssmax_b = nn.Parameter(torch.zeros(self.n_heads)) if learn_bias else None

    def reset_parameters(self) -> None:
        """Linear defaults; ``s = s_init`` and ``b = 0`` for every head."""
        super().reset_parameters()
        if hasattr(self, "ssmax_s"):
            nn.init.constant_(self.ssmax_s, self.s_init)
            if self.ssmax_b is not None:
                nn.init.zeros_(self.ssmax_b)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **masking: Any) -> Tensor:
        """Scale each query by ``s log n + b`` (eq. 3), then softmax attention."""
        Tq, Tk = q.shape[2], k.shape[2]
        positions = masking.get("q_positions")
        if positions is None:  # sdpa's default: the queries are the last Tq of the Tk keys
            positions = torch.arange(Tk - Tq, Tk, device=q.device)
        n = (positions + 1).clamp_min(1)  # keys seen under the causal mask; padding (position -1) gets n = 1
        if self.window is not None:
            n = n.clamp_max(self.window)
        log_n = torch.log(n.float())  # (T,) or (B, T)
        factor = self.ssmax_s.float()[:, None] * log_n.unsqueeze(-2)  # (H, T) or (B, H, T)
        if self.ssmax_b is not None:
            factor = factor + self.ssmax_b.float()[:, None]
        q = (q.float() * factor.unsqueeze(-1)).to(q.dtype)
        return super().attend(q, k, v, **masking)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ssmax_bias={self.ssmax_b is not None}"


class SSMax(DecoderOnly):
    """The ``decoder_only`` stack with :class:`SSMaxAttention` mixers."""

    config_class: ClassVar[type[ArchConfig]] = SSMaxConfig
    config: SSMaxConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s Scalable-Softmax attention."""
        c = self.config
        return SSMaxAttention(**self.attention_kwargs(), s_init=c.ssmax_s_init, learn_bias=c.ssmax_bias)
