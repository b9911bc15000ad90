"""Config of ``metaformer``: the general MetaFormer of Yu et al., with a token mixer per stage (torch-free).

The model is :mod:`edifice_vision._metaformer` (Yu et al., "MetaFormer Baselines for Vision", 2022,
arXiv:2210.13452). Every block is the MetaFormer of eq. (1)-(2): ``X' = X + TokenMixer(Norm(X))``,
``X'' = X' + MLP(Norm(X'))``; the four stages differ only in their token mixer. :class:`MetaFormerConfig` is the base
of ``poolformer`` (pooling everywhere, :mod:`.poolformer`) and ``caformer`` (separable convolutions, then attention,
:mod:`.caformer`); the three share the model class and the converter from timm's ``MetaFormer``.

``metaformer``'s own defaults are ConvFormer-S18 of the paper (Table 1: inverted separable convolutions as the mixer
in every stage, StarReLU, ResScale in the last two stages, an MLP head), the one baseline that has no entry of its
own; ``token_mixers`` picks any of the paper's mixers per stage (see ``docs/design/metaformer.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["CONVERTERS", "MIXERS", "SPECS", "YU_BASELINES", "MetaFormerConfig", "metaformer_spec"]

YU_BASELINES = Paper("MetaFormer Baselines for Vision", "Yu et al.", 2022, "2210.13452")

#: Token mixers of the MetaFormer papers: IdentityFormer's identity, RandFormer's frozen random mixing, PoolFormer's
#: ``Pool(X) - X``, ConvFormer's inverted separable convolution and the transformer's self-attention.
MIXERS = ("identity", "random", "pooling", "sepconv", "attention")
NORMS = ("layernorm", "groupnorm")


@dataclasses.dataclass(kw_only=True)
class MetaFormerConfig(ImageConfig):
    """MetaFormer: a 7x7/4 stem, then stages of ``X + TokenMixer(Norm(X))``, ``+ MLP(Norm(.))`` blocks (eq. 1-2)."""

    arch: str = field("metaformer", "Registry name of the architecture this config builds.")
    depths: tuple[int, ...] = field((3, 3, 9, 3), "Blocks per stage (ConvFormer-S18: 3, 3, 9, 3).")
    dims: tuple[int, ...] = field(
        (64, 128, 320, 512),
        "Width of each stage; a stage of its predecessor's width keeps "
        "its resolution (no downsampling, as in the authors' code).",
    )
    token_mixers: tuple[str, ...] = field(
        ("sepconv",) * 4, "Token mixer of each stage: 'identity', 'random', 'pooling', 'sepconv' or 'attention'."
    )
    patch_size: int = field(4, "Stride of the stem convolution (kernel 2p-1, padding p//2: the paper's 7x7/4 for 4).")
    pool_size: int = field(3, "Window of the 'pooling' mixer (stride 1, padding excluded from the average).")
    head_dim: int = field(32, "Head size of the 'attention' mixer (heads = max(1, width // head_dim)).")
    sepconv_expansion: float = field(2.0, "Inner width of the 'sepconv' mixer as a multiple of the stage width.")
    sepconv_kernel: int = field(7, "Kernel of the depthwise convolution of the 'sepconv' mixer.")
    mlp_ratio: float = field(4.0, "MLP hidden width as a multiple of the stage width.")
    activation: str = field("starrelu", "MLP activation: 'starrelu' (s * relu(x)^2 + b, learnable) or a core name.")
    mlp_bias: bool = field(False, "Biases in the MLP's two linear layers.")
    norm: str = field("layernorm", "Norm of the blocks: 'layernorm' (over channels) or 'groupnorm' (one group).")
    norm_bias: bool = field(False, "An additive bias in the blocks' norms (MetaFormer Baselines drop it).")
    norm_eps: float = field(1e-6, "Epsilon of the blocks' norms.")
    downsample_norm: bool = field(True, "LayerNorm (no bias) after the stem and before each downsampling conv.")
    layer_scale: float | None = field(None, "Initial LayerScale gain on each branch (PoolFormer: 1e-5); None: none.")
    res_scale: float | None = field(1.0, "Initial ResScale gain on the shortcut of the last res_scale_stages stages.")
    res_scale_stages: int = field(2, "How many of the last stages scale their shortcut (ResScale, Shleifer 2021).")
    head: str = field("mlp", "Classifier: 'mlp' (fc, squared ReLU, LayerNorm, fc; hidden 4x) or 'linear'.")

    aliases: ClassVar[Mapping[str, str]] = {
        **ImageConfig.aliases,
        "embed_dims": "dims",
        "hidden_sizes": "dims",
        "layers": "depths",
        "mlp_act": "activation",
        "layer_scale_init_value": "layer_scale",
        "res_scale_init_value": "res_scale",
    }
    #: Derived sizes the spec's shapes name (``features [B, num_features]``).
    spec_properties: ClassVar[tuple[str, ...]] = ("num_features",)

    @property
    def num_features(self) -> int:
        """Width of the last stage (the pooled feature size)."""
        return self.dims[-1]

    def stage_sizes(self, size: int) -> list[int]:
        """The side of each stage's map for a ``size x size`` image (stem kernel ``2p-1``, then 3x3/2 per stage)."""
        p = self.patch_size
        side = (size + 2 * (p // 2) - (2 * p - 1)) // p + 1
        sides = []
        for i, dim in enumerate(self.dims):
            if i > 0 and dim != self.dims[i - 1]:
                side = (side - 1) // 2 + 1
            sides.append(side)
        return sides

    def validate(self) -> None:
        """One depth, width and mixer per stage, mixers and norms from their choices, positive sizes."""
        super().validate()
        self.check_positive("patch_size", "pool_size", "head_dim", "sepconv_expansion", "sepconv_kernel")
        self.check_positive("mlp_ratio", "norm_eps")
        if not self.depths or any(n < 1 for n in self.depths):
            self.fail("depths", "must list at least one stage, each with >= 1 block")
        n = len(self.depths)
        if len(self.dims) != n or any(d < 1 for d in self.dims):
            self.fail("dims", f"must give one positive width per stage ({n} stages in depths)")
        if len(self.token_mixers) != n:
            self.fail("token_mixers", f"must name one mixer per stage ({n} stages in depths), from {MIXERS}")
        for mixer in self.token_mixers:
            if mixer not in MIXERS:
                self.fail("token_mixers", f"{mixer!r} is not a token mixer; choose from {', '.join(MIXERS)}")
        if self.pool_size % 2 == 0:
            self.fail("pool_size", "must be odd (the pooled map keeps its size)")
        if self.sepconv_kernel % 2 == 0:
            self.fail("sepconv_kernel", "must be odd (the convolved map keeps its size)")
        if self.activation != "starrelu":
            self.check_activation("activation")
        self.check_choice("norm", NORMS)
        self.check_choice("head", ("mlp", "linear"))
        self.check_positive("res_scale_stages", allow_zero=True)
        if self.layer_scale is not None:
            self.check_positive("layer_scale")
        if self.res_scale is not None:
            self.check_positive("res_scale")
        if "random" in self.token_mixers and min(self.stage_sizes(self.image_size)) < 1:
            self.fail("image_size", f"{self.image_size} leaves an empty map for the 'random' mixer's token matrix")


def metaformer_spec(name: str, summary: str, paper: Paper, *, config: str, model: str, **options: object) -> object:
    """The spec of a MetaFormer entry (features ``[B, num_features]``; converters from timm's ``MetaFormer``)."""
    return image_spec(
        name,
        family="vision",
        summary=summary,
        paper=paper,
        config=config,
        model=model,
        num_features="num_features",
        interop=("timm.models.metaformer.MetaFormer",),
        **options,  # type: ignore[arg-type]
    )


#: Tiny MetaFormer: 16x16 images, stem stride 2, four one-block stages on 8, 4, 2 and 2 pixel maps (the last keeps
#: its width, so its resolution: no 1x1 map, where attention and pooling would have nothing to mix).
TINY = {
    "image_size": 16,
    "patch_size": 2,
    "depths": (1, 1, 1, 1),
    "dims": (8, 16, 24, 24),
    "token_mixers": ("identity", "pooling", "sepconv", "attention"),
    "head_dim": 8,
    "num_classes": 10,
}

SPECS = (
    metaformer_spec(
        "metaformer",
        "MetaFormer: X + TokenMixer(Norm(X)), + MLP(Norm(.)) in four stages, any of identity, random, pooling, "
        "separable-conv or attention mixers per stage (ConvFormer by default).",
        YU_BASELINES,
        config="edifice_vision.configs.metaformer:MetaFormerConfig",
        model="edifice_vision.metaformer:MetaFormer",
        tiny=TINY,
        verification="parity:timm.models.metaformer.MetaFormer",
    ),
)

CONVERTERS = (
    Converter(
        "timm.metaformer",
        "metaformer",
        "edifice_vision._metaformer:from_timm_metaformer",
        "timm MetaFormer checkpoints (convformer_*, and any poolformer/caformer as a metaformer; model or state dict).",
    ),
)
