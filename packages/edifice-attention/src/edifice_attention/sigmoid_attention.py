"""Sigmoid self-attention: elementwise sigmoid attention weights with the bias ``b = -log n``.

Ramapuram et al. (2025), "Theory, Analysis, and Best Practices for Sigmoid Self-Attention", ICLR 2025,
https://arxiv.org/abs/2409.04431. Implemented: ``SigmoidAttn(X) = σ(Q K^T / sqrt(d_qk) + b) V`` (§2, eq. 2), each
weight its own sigmoid (no sum over keys), causal, with the paper's bias ``b = -log(n)`` (§3.3 and §5: it keeps the
initial attention norm near softmax's; ``n`` is the training sequence length, config ``bias_length``), computed by
:func:`edifice.ops.variant_attention` (``normalizer="sigmoid"``). The rest is the ``decoder_only`` stack.

Deviations: ``n`` is a fixed length (the paper's training length), not the number of keys each causal query sees,
so that decoding equals the parallel form; the catalogue's LayerScale option (the paper's §5 stabiliser for some
vision runs) is not built; qk-norm (``qk_norm``, the paper's "hybrid-norm" uses it for LM runs) is available and
off by default; FlashSigmoid is a kernel concern (edifice-kernels may override the op).
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from edifice.config import ArchConfig
from edifice_attention._attention_variants import VariantAttention
from edifice_attention.configs.sigmoid_attention import SigmoidAttentionConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["SigmoidAttention"]


class SigmoidAttention(DecoderOnly):
    """The ``decoder_only`` stack with sigmoid attention (a :class:`VariantAttention`, ``normalizer="sigmoid"``)."""

    config_class: ClassVar[type[ArchConfig]] = SigmoidAttentionConfig
    config: SigmoidAttentionConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s attention: ``σ(QK^T/sqrt(d) + b) V`` with ``b = -log n``."""
        return VariantAttention(**self.attention_kwargs(), normalizer="sigmoid", logit_bias=self.config.logit_bias)
