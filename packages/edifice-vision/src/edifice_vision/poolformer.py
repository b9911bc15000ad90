"""``poolformer``: PoolFormer (Yu et al., CVPR 2022, arXiv:2111.11418), the MetaFormer whose mixer is pooling.

The blocks, stages and head are :mod:`edifice_vision._metaformer`'s, with ``TokenMixer(X) = AvgPool(X) - X`` (eq. 4);
the defaults are PoolFormer-S12 (:mod:`edifice_vision.configs.poolformer`), PoolFormerV2 is a set of options.
"""

from __future__ import annotations

from typing import Any

from edifice_vision._metaformer import MetaFormer, convert_timm_metaformer
from edifice_vision.configs.poolformer import PoolFormerConfig

__all__ = ["PoolFormer", "from_timm"]


class PoolFormer(MetaFormer):
    """PoolFormer: :class:`~edifice_vision._metaformer.MetaFormer` built from a :class:`PoolFormerConfig`."""

    config_class = PoolFormerConfig
    config: PoolFormerConfig


def from_timm(source: Any, **overrides: Any) -> PoolFormer:
    """Convert a timm PoolFormer (``poolformer_s12`` .. ``poolformerv2_m48``; model or state dict) to ``poolformer``.

    A state dict is read as GroupNorm-normed (PoolFormer's); ``overrides`` set other fields (e.g. ``pool_size``).
    """
    model = convert_timm_metaformer(source, "poolformer", PoolFormer, **overrides)
    assert isinstance(model, PoolFormer)
    return model
