"""``metaformer``: the general MetaFormer of Yu et al. (arXiv:2210.13452), any token mixer per stage.

The model is :class:`edifice_vision._metaformer.MetaFormer`, shared with ``poolformer`` and ``caformer``; this entry's
defaults are ConvFormer-S18 (see :mod:`edifice_vision.configs.metaformer`). :func:`from_timm` converts any timm
``MetaFormer`` checkpoint.
"""

from __future__ import annotations

from edifice_vision._metaformer import MetaFormer
from edifice_vision._metaformer import from_timm_metaformer as from_timm

__all__ = ["MetaFormer", "from_timm"]
