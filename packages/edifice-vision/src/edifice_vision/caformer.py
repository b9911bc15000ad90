"""``caformer``: CAFormer of "MetaFormer Baselines for Vision" (Yu et al., arXiv:2210.13452), conv then attention.

The blocks, stages and head are :mod:`edifice_vision._metaformer`'s, with ConvFormer's separable convolution (eq. 5)
as the mixer of the first two stages and self-attention in the last two; the defaults are CAFormer-S18
(:mod:`edifice_vision.configs.caformer`).
"""

from __future__ import annotations

from typing import Any

from edifice_vision._metaformer import MetaFormer, convert_timm_metaformer
from edifice_vision.configs.caformer import CAFormerConfig

__all__ = ["CAFormer", "from_timm"]


class CAFormer(MetaFormer):
    """CAFormer: :class:`~edifice_vision._metaformer.MetaFormer` built from a :class:`CAFormerConfig`."""

    config_class = CAFormerConfig
    config: CAFormerConfig


def from_timm(source: Any, **overrides: Any) -> CAFormer:
    """Convert a timm CAFormer (``caformer_s18`` .. ``caformer_b36``; model or state dict) to ``caformer``."""
    model = convert_timm_metaformer(source, "caformer", CAFormer, **overrides)
    assert isinstance(model, CAFormer)
    return model
