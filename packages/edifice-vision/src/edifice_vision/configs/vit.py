"""Config of ``vit``: the Vision Transformer, and the base of every plain-ViT entry (deit, dino_v2, dino_v3).

The model is :mod:`edifice_vision.vit` (Dosovitskiy et al., ICLR 2021): non-overlapping patches linearly embedded,
a class token, learned position embeddings, pre-norm transformer blocks, a final LayerNorm and a linear head. Field
names follow edifice (``d_model``, ``n_layers``, ``n_heads``); timm's and transformers' names are aliases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["CONVERTERS", "SPECS", "ViTConfig", "vit_spec"]

DOSOVITSKIY = Paper(
    "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
    "Dosovitskiy et al.",
    2021,
    "2010.11929",
)

#: Why softmax attention cannot train a key bias: ``q·(k_j + b) = q·k_j + q·b`` shifts every key's logit equally.
KEY_BIAS_EXEMPT = {
    "stages.*.attn.k_proj.bias": "softmax is invariant to a key bias (q·b is the same for every key); it is kept "
    "so the qkv biases of timm/transformers checkpoints map one to one",
}


@dataclasses.dataclass(kw_only=True)
class ViTConfig(ImageConfig):
    """ViT: ``z_0 = [x_class; x_p E] + E_pos`` (eq. 1), ``L`` pre-norm MSA/MLP blocks (eqs. 2-3), ``y = LN(z_L^0)``."""

    arch: str = field("vit", "Registry name of the architecture this config builds.")
    image_size: int = field(224, "Side of the training images (the position-embedding grid is image_size/patch_size).")
    global_pool: str = field("token", "Pooling before the head: 'token' (class token, eq. 4), 'avg', 'max' or ''.")
    patch_size: int = field(16, "Side of the square, non-overlapping patches (pixels).")
    d_model: int = field(768, "Width of the tokens (the paper's latent size D).")
    n_layers: int = field(12, "Transformer blocks.")
    n_heads: int = field(12, "Attention heads per block.")
    mlp_ratio: float = field(4.0, "MLP hidden width as a multiple of d_model (used when ffn_hidden is None).")
    ffn_hidden: int | None = field(None, "MLP hidden width; None derives it from mlp_ratio.")
    ffn: str = field("mlp", "Feed-forward kind: 'mlp' (the paper's GELU MLP) or 'swiglu' (gated, biased).")
    activation: str = field("gelu", "Activation of the 'mlp' feed-forward.")
    qkv_bias: bool = field(True, "Biases on the query, key and value projections.")
    key_bias: bool = field(True, "Bias on the key projection when qkv_bias (DINOv3 has none).")
    class_token: bool = field(True, "Prepend the learnable class token x_class (eq. 1).")
    num_register_tokens: int = field(0, "Register tokens after the class token (Darcet et al. 2024); no position.")
    positional: str = field("learned", "Positions: 'learned' (E_pos, eq. 1, resampled to any grid) or 'rope' (2-D).")
    pos_embed_antialias: bool = field(True, "Antialias the bicubic resampling of E_pos (timm: True; DINOv2: False).")
    rope_theta: float = field(100.0, "Base of the 2-D RoPE frequencies (positional='rope').")
    layer_scale: float | None = field(None, "Initial LayerScale gain of each residual branch (CaiT); None: none.")
    fc_norm: bool = field(False, "Normalise after pooling instead of before (timm's fc_norm, for 'avg' pooling).")
    norm_eps: float = field(1e-6, "Epsilon of the LayerNorms.")
    attn_drop_rate: float = field(0.0, "Dropout on the attention probabilities.")
    proj_drop_rate: float = field(0.0, "Dropout after the attention output and after each MLP layer (paper B.1).")
    pos_drop_rate: float = field(0.0, "Dropout on the embedded tokens after adding positions.")

    aliases: ClassVar[Mapping[str, str]] = {
        **ImageConfig.aliases,
        "embed_dim": "d_model",
        "hidden_size": "d_model",
        "depth": "n_layers",
        "num_layers": "n_layers",
        "num_hidden_layers": "n_layers",
        "num_heads": "n_heads",
        "num_attention_heads": "n_heads",
        "reg_tokens": "num_register_tokens",
        "init_values": "layer_scale",
        "layer_norm_eps": "norm_eps",
    }
    pool_choices: ClassVar[tuple[str, ...]] = ("token", "avg", "max", "")

    def validate(self) -> None:
        """Sizes positive, the patch divides the image, heads divide the width, a class token for 'token' pooling."""
        super().validate()
        self.check_positive("patch_size", "d_model", "n_layers", "n_heads", "mlp_ratio", "norm_eps")
        self.check_positive("num_register_tokens", allow_zero=True)
        if self.ffn_hidden is not None:
            self.check_positive("ffn_hidden")
        self.check_divides("n_heads", "d_model")
        if self.image_size % self.patch_size:
            self.fail("image_size", f"{self.image_size} is not a multiple of patch_size={self.patch_size}")
        self.check_choice("ffn", ("mlp", "swiglu"))
        self.check_activation("activation")
        self.check_choice("positional", ("learned", "rope"))
        if self.positional == "rope":
            self.check_positive("rope_theta")
            if (self.d_model // self.n_heads) % 4:
                self.fail("n_heads", "2-D RoPE needs a head size (d_model / n_heads) divisible by 4")
        if self.layer_scale is not None:
            self.check_positive("layer_scale")
        for name in ("attn_drop_rate", "proj_drop_rate", "pos_drop_rate"):
            self.check_range(name, 0.0, 1.0)
            if getattr(self, name) == 1.0:
                self.fail(name, "must be < 1")
        if self.global_pool == "token" and not self.class_token:
            self.fail("global_pool", "'token' pooling needs class_token=True")
        if self.fc_norm and self.global_pool in ("token", ""):
            self.fail("fc_norm", "normalises pooled patch features: use it with global_pool 'avg' or 'max'")

    @property
    def grid_size(self) -> int:
        """Patches per side at ``image_size`` (the stored position-embedding grid)."""
        return self.image_size // self.patch_size

    def ffn_width(self) -> int:
        """The MLP hidden width: ``ffn_hidden``, else ``int(mlp_ratio * d_model)``."""
        return self.ffn_hidden if self.ffn_hidden is not None else int(self.mlp_ratio * self.d_model)


def vit_spec(name: str, summary: str, paper: Paper, *, config: str, model: str, **options: object) -> object:
    """The spec of a plain-ViT entry (features ``[B, d_model]``)."""
    options.setdefault("grad_exempt", KEY_BIAS_EXEMPT)
    return image_spec(
        name,
        family="vision",
        summary=summary,
        paper=paper,
        config=config,
        model=model,
        num_features="d_model",
        **options,  # type: ignore[arg-type]
    )


#: A tiny ViT: 16x16 images in 4x4 patches (16 tokens + class token), two blocks of width 32.
TINY = {"image_size": 16, "patch_size": 4, "d_model": 32, "n_layers": 2, "n_heads": 4, "num_classes": 10}

SPECS = (
    vit_spec(
        "vit",
        "Vision Transformer: patch embedding, class token, learned positions, pre-norm blocks (timm's API).",
        DOSOVITSKIY,
        config="edifice_vision.configs.vit:ViTConfig",
        model="edifice_vision.vit:VisionTransformer",
        tiny=TINY,
        verification="parity:timm.models.vision_transformer.VisionTransformer",
        interop=("timm.models.vision_transformer.VisionTransformer", "transformers.ViTModel"),
    ),
)

CONVERTERS = (
    Converter(
        "timm.VisionTransformer",
        "vit",
        "edifice_vision._vit_convert:from_timm_vit",
        "timm vision_transformer checkpoints (model or state dict + config overrides): images -> logits.",
    ),
)
