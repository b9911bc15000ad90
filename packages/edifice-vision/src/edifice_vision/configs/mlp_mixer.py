"""Config of ``mlp_mixer``: MLP-Mixer, an all-MLP image classifier (torch-free).

The model is :mod:`edifice_vision.mlp_mixer` (Tolstikhin et al., NeurIPS 2021): non-overlapping patches linearly
embedded, ``n_layers`` Mixer layers -- a token-mixing MLP across the patches, then a channel-mixing MLP across the
channels, each pre-normed and residual (eq. 1) -- a final LayerNorm, global average pooling and a linear head. The
defaults are Mixer-S/16 at 224x224 (Table 1: D_C = 512, S = 196 patches, D_S = 256, D_C hidden = 2048, 8 layers).
Field names follow edifice (``d_model``, ``n_layers``); the paper's and timm's names are aliases.

The token-mixing MLP's weights are ``[token_mlp_dim, S]`` with ``S = (image_size / patch_size)²``: a model reads
images of ``image_size`` only (another size raises a ``ValueError`` naming the expected one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs._image import ImageConfig, image_spec

__all__ = ["CONVERTERS", "SPECS", "MlpMixerConfig"]

TOLSTIKHIN = Paper("MLP-Mixer: An all-MLP Architecture for Vision", "Tolstikhin et al.", 2021, "2105.01601")


@dataclasses.dataclass(kw_only=True)
class MlpMixerConfig(ImageConfig):
    """MLP-Mixer: ``U = X + W2 σ(W1 LN(X)^T)`` per channel, ``Y = U + W4 σ(W3 LN(U))`` per patch (eq. 1)."""

    arch: str = field("mlp_mixer", "Registry name of the architecture this config builds.")
    image_size: int = field(224, "Side of the images: fixes the token count S the token-mixing MLP is sized for.")
    patch_size: int = field(16, "Side of the square, non-overlapping patches (pixels).")
    d_model: int = field(512, "Hidden width of every patch (the paper's C, 'hidden size').")
    n_layers: int = field(8, "Mixer layers.")
    token_mlp_dim: int = field(256, "Hidden width of the token-mixing MLP (the paper's D_S).")
    channel_mlp_dim: int = field(2048, "Hidden width of the channel-mixing MLP (the paper's D_C).")
    activation: str = field("gelu", "Activation σ of both MLPs (the paper's GELU).")
    norm_eps: float = field(1e-6, "Epsilon of the LayerNorms.")
    proj_drop_rate: float = field(0.0, "Dropout inside and after each MLP (timm's proj_drop_rate).")

    aliases: ClassVar[Mapping[str, str]] = {
        **ImageConfig.aliases,
        "hidden_size": "d_model",
        "hidden_dim": "d_model",
        "embed_dim": "d_model",
        "num_layers": "n_layers",
        "num_blocks": "n_layers",
        "depth": "n_layers",
        "tokens_mlp_dim": "token_mlp_dim",
        "channels_mlp_dim": "channel_mlp_dim",
        "layer_norm_eps": "norm_eps",
    }
    pool_choices: ClassVar[tuple[str, ...]] = ("avg", "")

    def validate(self) -> None:
        """Sizes positive, the patch divides the image, the dropout rate in [0, 1)."""
        super().validate()
        self.check_positive("patch_size", "d_model", "n_layers", "token_mlp_dim", "channel_mlp_dim", "norm_eps")
        if self.image_size % self.patch_size:
            self.fail("image_size", f"{self.image_size} is not a multiple of patch_size={self.patch_size}")
        self.check_activation("activation")
        self.check_range("proj_drop_rate", 0.0, 1.0)
        if self.proj_drop_rate == 1.0:
            self.fail("proj_drop_rate", "must be < 1")

    @property
    def num_patches(self) -> int:
        """The token count S = (image_size / patch_size)² the token-mixing MLP mixes."""
        return (self.image_size // self.patch_size) ** 2


#: A tiny Mixer: 16x16 images in 4x4 patches (S = 16 tokens), two layers of width 32.
TINY = {
    "image_size": 16,
    "patch_size": 4,
    "d_model": 32,
    "n_layers": 2,
    "token_mlp_dim": 16,
    "channel_mlp_dim": 64,
    "num_classes": 10,
}

SPECS = (
    image_spec(
        "mlp_mixer",
        family="vision",
        summary="MLP-Mixer: patch embedding, token-mixing and channel-mixing MLPs, no attention (timm's API).",
        paper=TOLSTIKHIN,
        config="edifice_vision.configs.mlp_mixer:MlpMixerConfig",
        model="edifice_vision.mlp_mixer:MlpMixer",
        num_features="d_model",
        tiny=TINY,
        verification="parity:timm.models.mlp_mixer.MlpMixer",
        interop=("timm.models.mlp_mixer.MlpMixer",),
    ),
)

CONVERTERS = (
    Converter(
        "timm.mlp_mixer",
        "mlp_mixer",
        "edifice_vision.mlp_mixer:from_timm",
        "timm MLP-Mixer checkpoints (mixer_*; model or state dict): images -> logits.",
    ),
)
