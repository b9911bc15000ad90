"""Config of ``caformer``: CAFormer of "MetaFormer Baselines for Vision", convolutions then attention.

The model is :mod:`edifice_vision.caformer`, the shared MetaFormer of :mod:`edifice_vision._metaformer` (Yu et al.,
arXiv:2210.13452, §3.3): inverted separable convolutions (ConvFormer's mixer, eq. 5) in the first two stages and
vanilla self-attention in the last two, with StarReLU (eq. 6), ResScale in the last two stages, LayerNorm without
bias and an MLP head. The defaults are CAFormer-S18 (Table 1).
"""

from __future__ import annotations

import dataclasses

from edifice import Converter, field
from edifice_vision.configs.metaformer import YU_BASELINES, MetaFormerConfig, metaformer_spec

__all__ = ["CONVERTERS", "SPECS", "CAFormerConfig"]


@dataclasses.dataclass(kw_only=True)
class CAFormerConfig(MetaFormerConfig):
    """CAFormer: MetaFormer with 'sepconv' mixers in the early stages and 'attention' in the late ones (S18)."""

    arch: str = field("caformer", "Registry name of the architecture this config builds.")
    token_mixers: tuple[str, ...] = field(
        ("sepconv", "sepconv", "attention", "attention"),
        "Token mixer of each stage (CAFormer: conv, conv, attn, attn).",
    )

    def validate(self) -> None:
        """The MetaFormer checks, and attention as a mixer somewhere (otherwise it is a ConvFormer)."""
        super().validate()
        if "attention" not in self.token_mixers:
            self.fail("token_mixers", "a caformer attends in at least one stage; use metaformer for other mixers")


#: Tiny CAFormer: 16x16 images, stem stride 2, four one-block stages on 8, 4, 2 and 2 pixel maps (attention over
#: four tokens in the last two stages, three heads of 8).
TINY = {
    "image_size": 16,
    "patch_size": 2,
    "depths": (1, 1, 1, 1),
    "dims": (8, 16, 24, 24),
    "head_dim": 8,
    "num_classes": 10,
}

SPECS = (
    metaformer_spec(
        "caformer",
        "CAFormer: MetaFormer with separable-conv mixers in stages 1-2 and self-attention in stages 3-4.",
        YU_BASELINES,
        config="edifice_vision.configs.caformer:CAFormerConfig",
        model="edifice_vision.caformer:CAFormer",
        tiny=TINY,
        verification="parity:timm.models.metaformer.MetaFormer",
    ),
)

CONVERTERS = (
    Converter(
        "timm.caformer",
        "caformer",
        "edifice_vision.caformer:from_timm",
        "timm CAFormer checkpoints (caformer_s18/s36/m36/b36; model or state dict).",
    ),
)
