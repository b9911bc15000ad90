"""MLP-Mixer: an image classifier of MLPs only, mixing across patches and across channels in turn.

Tolstikhin et al. (2021), "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS 2021,
https://arxiv.org/abs/2105.01601. Implemented (§2):

* the per-patch fully-connected layer: ``S`` non-overlapping ``P x P`` patches, each projected to ``C`` channels
  (:class:`~edifice_vision._vit_blocks.PatchEmbed`, a stride-``P`` convolution -- the same map), giving
  ``X [S, C]`` with no position embedding (§2: "Mixer does not use position embeddings");
* eq. (1), each Mixer layer (:class:`MixerBlock`, one "stage" of the backbone API):
  ``U_{*,i} = X_{*,i} + W_2 σ(W_1 LayerNorm(X)_{*,i})`` for every channel ``i`` (the token-mixing MLP, shared
  across channels, hidden width ``D_S = token_mlp_dim``), then
  ``Y_{j,*} = U_{j,*} + W_4 σ(W_3 LayerNorm(U)_{j,*})`` for every patch ``j`` (the channel-mixing MLP, hidden
  width ``D_C = channel_mlp_dim``); σ is GELU, and each MLP has biases (core's
  :class:`~edifice.blocks.ffn.FeedForward`);
* the head: a final LayerNorm, global average pooling over the patches and a linear classifier.

The token-mixing MLP maps ``S`` tokens to ``S`` tokens, so a model reads images of its ``image_size`` only: another
size raises a ``ValueError`` naming the expected size (a patch that does not divide the image is named first).

Where the paper is silent we follow timm's ``mlp_mixer.py`` (the parity reference, which loads the authors' JAX
checkpoints): LayerNorm eps 1e-6, exact GELU, Xavier-uniform linear weights with ``N(0, 1e-6²)`` MLP biases and
LeCun-normal patch projection. Deviations: the classifier is initialised like the other linears where timm sets it to
zero (a zero head passes no gradient to the body of a freshly built model; fine-tuning replaces it anyway), and
stochastic depth rises linearly to ``drop_path_rate`` over the layers (the family's schedule) where timm applies the
same rate to every layer. Neither changes inference.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import Tensor, nn

import edifice
from edifice.blocks.ffn import FeedForward
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice_vision._backbone import DropPath, FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision._timm_convert import load_converted, rename_keys, timm_state_dict, weight_shape
from edifice_vision._vit_blocks import PatchEmbed
from edifice_vision.configs.mlp_mixer import MlpMixerConfig

__all__ = ["MixerBlock", "MlpMixer", "from_timm"]


class MixerStem(nn.Module):
    """``[B, C, H, W] -> X [B, S, d_model]``: the per-patch linear embedding, for images of ``image_size`` only."""

    def __init__(self, config: MlpMixerConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.in_chans, config.d_model, config.patch_size, who=config.arch)

    def forward(self, images: Tensor) -> Tensor:
        """Patch tokens in row-major order; an image of another size than ``image_size`` raises a ``ValueError``."""
        c = self.config
        height, width = images.shape[-2], images.shape[-1]
        tokens: Tensor = self.patch_embed(images)  # names a size the patch does not divide
        if (height, width) != (c.image_size, c.image_size):
            raise ValueError(
                f"{c.arch}: image size {height}x{width} gives {tokens.shape[1]} patches, but the token-mixing MLP "
                f"is sized for {c.image_size}x{c.image_size} images ({c.num_patches} patches of {c.patch_size}x"
                f"{c.patch_size}); resize the images to {c.image_size}x{c.image_size}"
            )
        return tokens


class MixerBlock(nn.Module):
    """One Mixer layer (eq. 1): ``X + MLP_tokens(LN(X)^T)^T``, then ``U + MLP_channels(LN(U))``."""

    def __init__(self, config: MlpMixerConfig, drop_path: float) -> None:
        super().__init__()
        c = config
        ffn: dict[str, Any] = {"activation": c.activation, "bias": True, "dropout": c.proj_drop_rate}
        self.norm1 = get_norm("layernorm", c.d_model, eps=c.norm_eps)
        self.token_mlp = FeedForward(c.num_patches, c.token_mlp_dim, **ffn)  # W_1, W_2: across the S patches
        self.norm2 = get_norm("layernorm", c.d_model, eps=c.norm_eps)
        self.channel_mlp = FeedForward(c.d_model, c.channel_mlp_dim, **ffn)  # W_3, W_4: across the C channels
        self.proj_drop = nn.Dropout(c.proj_drop_rate)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``[B, S, d_model]`` -> ``[B, S, d_model]``."""
        mixed = self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)  # each channel's column of S values
        u = x + self.drop_path(self.proj_drop(mixed))
        out: Tensor = u + self.drop_path(self.proj_drop(self.channel_mlp(self.norm2(u))))
        return out


class MlpMixer(ImageBackbone):
    """MLP-Mixer backbone: ``MixerStem -> MixerBlock x n_layers -> LayerNorm -> mean over patches -> head``."""

    config_class: ClassVar[type[ArchConfig]] = MlpMixerConfig
    config: MlpMixerConfig

    def __init__(self, config: MlpMixerConfig) -> None:
        super().__init__(config)
        c = config
        self.stem = MixerStem(c)
        self.patch_stride = c.patch_size
        rates = stochastic_depth_rates(c.drop_path_rate, c.n_layers)
        self.stages = nn.ModuleList(MixerBlock(c, rate) for rate in rates)
        self.final_norm = get_norm("layernorm", c.d_model, eps=c.norm_eps)
        self.feature_info = [FeatureInfo(c.d_model, c.patch_size, f"stages.{i}") for i in range(c.n_layers)]
        self.init_head(c.d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's Mixer init: Xavier-uniform linears, MLP biases ``N(0, 1e-6²)``; LeCun-normal patch projection."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=1e-6) if "mlp" in name else nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                std = math.sqrt(1.0 / module.weight[0].numel()) / 0.87962566103423978  # truncated at ±2σ, rescaled
                nn.init.trunc_normal_(module.weight, std=std, a=-2.0 * std, b=2.0 * std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()


# -- converter ---------------------------------------------------------------------------------------------------------
_WHO = "MLP-Mixer"
_RULES = (
    (r"stem\.proj\.(weight|bias)", r"stem.patch_embed.proj.\1"),
    (r"blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"stages.\1.\2.\3"),
    (r"blocks\.(\d+)\.mlp_tokens\.fc1\.(weight|bias)", r"stages.\1.token_mlp.up_proj.\2"),
    (r"blocks\.(\d+)\.mlp_tokens\.fc2\.(weight|bias)", r"stages.\1.token_mlp.down_proj.\2"),
    (r"blocks\.(\d+)\.mlp_channels\.fc1\.(weight|bias)", r"stages.\1.channel_mlp.up_proj.\2"),
    (r"blocks\.(\d+)\.mlp_channels\.fc2\.(weight|bias)", r"stages.\1.channel_mlp.down_proj.\2"),
    (r"norm\.(weight|bias)", r"final_norm.\1"),
    (r"head\.(weight|bias)", r"head.\1"),
)


def from_timm(source: Any, **overrides: Any) -> MlpMixer:
    """Convert a timm ``MlpMixer`` of Mixer blocks (``mixer_*``; model or state dict) to ``mlp_mixer``.

    The sizes are read off the weights (the image size from the token-mixing MLP's width ``S``); ``overrides`` set
    other fields (e.g. ``drop_path_rate``). ResMLP and gMLP, which timm builds with the same class, have other
    parameters and raise :class:`~edifice.CheckpointError` naming them.
    """
    state_dict = timm_state_dict(source, who=_WHO)
    d_model, in_chans, patch, _ = weight_shape(state_dict, "stem.proj.weight", who=_WHO)
    token_mlp_dim, num_patches = weight_shape(state_dict, "blocks.0.mlp_tokens.fc1.weight", who=_WHO)
    channel_mlp_dim, _ = weight_shape(state_dict, "blocks.0.mlp_channels.fc1.weight", who=_WHO)
    fields: dict[str, Any] = {
        "in_chans": in_chans,
        "patch_size": patch,
        "image_size": math.isqrt(num_patches) * patch,
        "d_model": d_model,
        "n_layers": len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")}),
        "token_mlp_dim": token_mlp_dim,
        "channel_mlp_dim": channel_mlp_dim,
        "num_classes": state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
    }
    if isinstance(source, nn.Module):
        norm = next((m for m in source.modules() if isinstance(m, nn.LayerNorm)), None)
        if norm is not None:
            fields["norm_eps"] = norm.eps
        fields["global_pool"] = getattr(source, "global_pool", "avg")
    config = edifice.config("mlp_mixer", **{**fields, **overrides})
    assert isinstance(config, MlpMixerConfig)
    weights = rename_keys(state_dict, _RULES, who=_WHO)
    return load_converted(MlpMixer, config, weights, who=_WHO)
