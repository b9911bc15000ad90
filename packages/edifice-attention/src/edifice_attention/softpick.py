"""Softpick: attention with a rectified softmax, so a head can put (close to) no weight anywhere.

Zuhri et al. (2025), "Softpick: No Attention Sink, No Massive Activations with Rectified Softmax",
https://arxiv.org/abs/2504.20966. Implemented: ``Softpick(x)_i = ReLU(e^{x_i} - 1) / (sum_j |e^{x_j} - 1| + ε)``
(eq. 3) in place of the softmax of causal scaled dot-product attention, in its numerically stable form (eq. 4: both
sums multiplied by ``e^{-m}``; here ``m = max(max_j x_j, 0)``, so ``e^{-m} <= 1`` never overflows), masked keys adding
nothing to either sum; computed by :func:`edifice.ops.variant_attention` (``normalizer="softpick"``, ``ε = 1e-6``).
The rest is the ``decoder_only`` stack.

Deviations: ``ε`` is fixed at 1e-6 (``edifice.ops.attention_variants.SOFTPICK_EPS``); the paper's FlashAttention
kernel is an edifice-kernels concern.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from edifice.config import ArchConfig
from edifice_attention._attention_variants import VariantAttention
from edifice_attention.configs.softpick import SoftpickConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["Softpick"]


class Softpick(DecoderOnly):
    """The ``decoder_only`` stack with softpick attention (a :class:`VariantAttention`, ``normalizer="softpick"``)."""

    config_class: ClassVar[type[ArchConfig]] = SoftpickConfig
    config: SoftpickConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s attention with softpick weights."""
        return VariantAttention(**self.attention_kwargs(), normalizer="softpick")
