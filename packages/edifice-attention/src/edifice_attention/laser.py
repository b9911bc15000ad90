"""LASER: attention on exponentiated values, read back with a log.

Duvvuri & Dhillon (2025), "LASER: Attention with Exponential Transformation", ICML 2025,
https://arxiv.org/abs/2411.03493. Implemented: ``LASER(Q, K, V) = log(softmax(Q K^T / sqrt(d)) exp(V))`` (eq. 4),
causal, evaluated with the log-sum-exp trick of eq. 5, ``O = m + log(softmax(QK^T/sqrt(d)) exp(V - m))`` with ``m``
the column-wise maximum of ``V`` over the keys, by :func:`edifice.ops.variant_attention` (``exp_values=True``). The
rest is the ``decoder_only`` stack (the paper trains Llama-style models the same way).

Deviations: the shift ``m`` is the maximum over the keys of the call that any query may attend (a prefill or a whole
sequence), which cancels exactly; only a query whose visible values all lie ~87 (fp32's exp range) below a later
key's value would underflow (then clamped to the smallest normal before the log), which LASER's O(1) values avoid.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from edifice.config import ArchConfig
from edifice_attention._attention_variants import VariantAttention
from edifice_attention.configs.laser import LaserConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["Laser"]


class Laser(DecoderOnly):
    """The ``decoder_only`` stack with LASER attention (a :class:`VariantAttention`, ``exp_values=True``)."""

    config_class: ClassVar[type[ArchConfig]] = LaserConfig
    config: LaserConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s attention on ``exp(V)``, read back with ``log``."""
        return VariantAttention(**self.attention_kwargs(), exp_values=True)
