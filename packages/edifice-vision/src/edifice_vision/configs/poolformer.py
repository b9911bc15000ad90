"""Config of ``poolformer``: PoolFormer of Yu et al. (CVPR 2022), a MetaFormer whose token mixer is pooling.

The model is :mod:`edifice_vision.poolformer`, the shared MetaFormer of :mod:`edifice_vision._metaformer` (Yu et al.,
"MetaFormer Is Actually What You Need for Vision", arXiv:2111.11418) with ``TokenMixer(X) = AvgPool(X) - X`` (eq. 4)
in every stage. The defaults are the paper's PoolFormer-S12 (Table 1 and the released code): GroupNorm with one
group, GELU MLPs with biases, LayerScale 1e-5, a linear head. PoolFormerV2 of "MetaFormer Baselines" (arXiv:2210.13452,
timm's ``poolformerv2_*``) is the same entry with ``activation='starrelu'``, ``mlp_bias=False``, ``norm_bias=False``,
``norm_eps=1e-6``, ``downsample_norm=True``, ``layer_scale=None`` and ``res_scale=1.0``.
"""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_vision.configs.metaformer import MetaFormerConfig, metaformer_spec

__all__ = ["CONVERTERS", "SPECS", "PoolFormerConfig"]

YU_POOLFORMER = Paper("MetaFormer Is Actually What You Need for Vision", "Yu et al.", 2022, "2111.11418")


@dataclasses.dataclass(kw_only=True)
class PoolFormerConfig(MetaFormerConfig):
    """PoolFormer: MetaFormer blocks with ``Pool(Norm(X)) - Norm(X)`` as the token mixer (eq. 4), S12 by default."""

    arch: str = field("poolformer", "Registry name of the architecture this config builds.")
    depths: tuple[int, ...] = field((2, 2, 6, 2), "Blocks per stage (PoolFormer-S12: 2, 2, 6, 2).")
    dims: tuple[int, ...] = field((64, 128, 320, 512), "Width of each stage (PoolFormer-S: 64, 128, 320, 512).")
    token_mixers: tuple[str, ...] = field(("pooling",) * 4, "Token mixer of each stage (PoolFormer: 'pooling').")
    activation: str = field("gelu", "MLP activation (PoolFormer: GELU; PoolFormerV2: 'starrelu').")
    mlp_bias: bool = field(True, "Biases in the MLP's two linear layers.")
    norm: str = field("groupnorm", "Norm of the blocks: 'groupnorm' (one group over C, H, W) or 'layernorm'.")
    norm_bias: bool = field(True, "An additive bias in the blocks' norms (PoolFormerV2: none).")
    norm_eps: float = field(1e-5, "Epsilon of the blocks' norms (PoolFormerV2: 1e-6).")
    downsample_norm: bool = field(False, "LayerNorm (no bias) after the stem and before each downsampling conv (V2).")
    layer_scale: float | None = field(1e-5, "Initial LayerScale gain on each branch (S12/S24: 1e-5, S36+: 1e-6).")
    res_scale: float | None = field(None, "Initial ResScale gain on the shortcut of the last stages (V2: 1.0).")
    head: str = field("linear", "Classifier: 'linear' (PoolFormer) or 'mlp'.")

    def validate(self) -> None:
        """The MetaFormer checks, and pooling as a mixer somewhere (otherwise it is not a PoolFormer)."""
        super().validate()
        if "pooling" not in self.token_mixers:
            self.fail("token_mixers", "a poolformer pools in at least one stage; use metaformer for other mixers")


#: Tiny PoolFormer: 16x16 images, stem stride 2, four one-block stages on 8, 4, 2 and 2 pixel maps.
TINY = {
    "image_size": 16,
    "patch_size": 2,
    "depths": (1, 1, 1, 1),
    "dims": (8, 16, 24, 24),
    "num_classes": 10,
}

SPECS = (
    metaformer_spec(
        "poolformer",
        "PoolFormer: MetaFormer blocks whose token mixer is Pool(X) - X (S12 defaults; V2 by options).",
        YU_POOLFORMER,
        config="edifice_vision.configs.poolformer:PoolFormerConfig",
        model="edifice_vision.poolformer:PoolFormer",
        tiny=TINY,
        verification="parity:timm.models.metaformer.MetaFormer",
    ),
)

CONVERTERS = (
    Converter(
        "timm.poolformer",
        "poolformer",
        "edifice_vision.poolformer:from_timm",
        "timm PoolFormer checkpoints (poolformer_s12..m48 and poolformerv2_*; model or state dict).",
    ),
)
