"""The MetaFormer that ``metaformer``, ``poolformer`` and ``caformer`` share: one block, pluggable token mixers.

Yu et al. (2022), "MetaFormer Is Actually What You Need for Vision", https://arxiv.org/abs/2111.11418, and Yu et al.
(2022), "MetaFormer Baselines for Vision", https://arxiv.org/abs/2210.13452. Every block is the MetaFormer of
Baselines eq. (1)-(2) (PoolFormer eq. 1-2), with the optional scalings of §3.1:

    X' = ResScale(X) + LayerScale(TokenMixer(Norm(X)))                                       (1)
    X'' = ResScale(X') + LayerScale(σ(Norm(X') W_1) W_2)                                     (2)

where LayerScale and ResScale (Shleifer et al. 2021) are per-channel gains, identities when off. The token mixers
(:func:`token_mixer`, one per stage):

* ``identity``: IdentityFormer, ``TokenMixer(X) = X`` (Baselines §3.1, eq. 3);
* ``random``: RandFormer, ``TokenMixer(X) = X W_R`` with ``W_R = softmax(U)`` over a frozen uniform ``U`` of the
  stage's ``N x N`` tokens (eq. 4), a buffer here (it is never trained);
* ``pooling``: PoolFormer, ``TokenMixer(X) = AvgPool(X) - X`` (PoolFormer eq. 4; stride 1, padding excluded);
* ``sepconv``: ConvFormer, the inverted separable convolution of MobileNetV2,
  ``Conv_pw2(Conv_dw(σ(Conv_pw1(X))))`` (Baselines eq. 5, expansion 2, 7x7 depthwise);
* ``attention``: vanilla self-attention (core's :class:`~edifice.blocks.attention.Attention` through
  ``edifice.ops.sdpa``; heads of ``head_dim`` 32, no biases).

StarReLU (Baselines eq. 6): ``s · ReLU(x)² + b`` with learnable scalars ``s, b`` (:class:`StarReLU`). The MLP is core's
:class:`~edifice.blocks.ffn.FeedForward`, its activation StarReLU or a core one (GELU for PoolFormer).

The four stages are built as in the authors' released code (https://github.com/sail-sg/metaformer, and timm's
``MetaFormer`` that adapts it): a 7x7 stride-4 stem convolution, a 3x3 stride-2 convolution before each later stage
(with a bias-free LayerNorm before it when ``downsample_norm``), and a head that normalises *after* pooling. The
blocks work channels-last ``[B, H, W, C]`` (the authors' layout); stages take and return ``[B, C, H, W]``.

Deviations, all options whose defaults are the papers': ``patch_size`` sets the stem's stride ``p`` (kernel
``2p - 1``, padding ``p // 2``; the papers' stem is ``p = 4``), so tiny configs keep a map larger than 1x1 in every
stage; ``res_scale`` applies to the last ``res_scale_stages`` stages (the papers' models: the last two). As in the
authors' code, a stage as wide as the one before it does not downsample.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice.blocks.activations import get_activation
from edifice.blocks.attention import Attention
from edifice.blocks.ffn import FeedForward
from edifice.blocks.norms import get_norm
from edifice.errors import CheckpointError
from edifice_vision._backbone import DropPath, FeatureInfo, ImageBackbone, stochastic_depth_rates
from edifice_vision._timm_convert import load_converted, rename_keys, timm_state_dict, weight_shape
from edifice_vision._vit_blocks import LayerScale
from edifice_vision.configs.metaformer import MetaFormerConfig

__all__ = [
    "GroupNorm1",
    "MetaFormer",
    "MetaFormerBlock",
    "MlpHead",
    "Pooling",
    "RandomMixing",
    "SepConv",
    "StarReLU",
    "from_timm_metaformer",
    "token_mixer",
]


class StarReLU(nn.Module):
    """``s · ReLU(x)² + b`` with learnable scalars ``s`` (init 1) and ``b`` (init 0) (Baselines eq. 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def reset_parameters(self) -> None:
        """``s = 1``, ``b = 0``: squared ReLU at initialisation."""
        nn.init.ones_(self.scale)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation elementwise."""
        return self.scale * torch.relu(x).square() + self.bias


class GroupNorm1(nn.Module):
    """GroupNorm with one group on ``[B, H, W, C]``: statistics over a sample's ``H, W, C``, a gain per channel, fp32.

    PoolFormer's norm (``nn.GroupNorm(1, C)`` in the authors' code), written channels-last.
    """

    def __init__(self, dim: int, eps: float = 1e-5, *, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        """Unit gain, zero shift."""
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C] -> [B, H, W, C]``."""
        h = x.float()
        mean = h.mean((1, 2, 3), keepdim=True)
        var = h.var((1, 2, 3), keepdim=True, unbiased=False)
        h = (h - mean) * torch.rsqrt(var + self.eps) * self.weight.float()
        if self.bias is not None:
            h = h + self.bias.float()
        return h.to(x.dtype)


def block_norm(config: MetaFormerConfig, dim: int) -> nn.Module:
    """The blocks' norm over a channels-last map: LayerNorm over ``C`` or one-group GroupNorm over ``H, W, C``."""
    if config.norm == "groupnorm":
        return GroupNorm1(dim, config.norm_eps, bias=config.norm_bias)
    return get_norm("layernorm" if config.norm_bias else "layernorm_nobias", dim, eps=config.norm_eps)


def mlp_activation(name: str) -> nn.Module:
    """StarReLU by name, or a core activation."""
    return StarReLU() if name == "starrelu" else get_activation(name)


# -- token mixers (all [B, H, W, C] -> [B, H, W, C]) ------------------------------------------------------------------
class Pooling(nn.Module):
    """PoolFormer's mixer ``AvgPool(X) - X`` (eq. 4): a ``k x k`` stride-1 average that excludes the padding."""

    def __init__(self, pool_size: int) -> None:
        super().__init__()
        self.pool_size = pool_size

    def forward(self, x: Tensor) -> Tensor:
        """Mix each token with its ``k x k`` neighbourhood; subtracting ``X`` leaves only the mixing."""
        nchw = x.permute(0, 3, 1, 2)
        k = self.pool_size
        pooled = F.avg_pool2d(nchw, k, stride=1, padding=k // 2, count_include_pad=False)
        return (pooled - nchw).permute(0, 2, 3, 1)


class RandomMixing(nn.Module):
    """RandFormer's mixer ``X W_R``: ``W_R = softmax(U)``, ``U ~ U(0, 1)^{N x N}`` drawn once and frozen (eq. 4).

    ``W_R`` is a buffer (saved, never trained), so the stage accepts only its ``side x side`` map.
    """

    matrix: Tensor

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side
        self.register_buffer("matrix", torch.empty(side * side, side * side))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw ``W_R = softmax(U)`` row-wise."""
        u = torch.rand(self.matrix.shape, generator=generator, dtype=torch.float32)
        self.matrix.copy_(u.softmax(-1).to(self.matrix.device, self.matrix.dtype))

    def forward(self, x: Tensor) -> Tensor:
        """``out[b, m] = sum_n W_R[m, n] x[b, n]`` over the stage's tokens."""
        B, H, W, C = x.shape
        if (self.side, self.side) != (H, W):
            raise ValueError(
                f"metaformer: the 'random' mixer is fixed to a {self.side}x{self.side} map (set by image_size), "
                f"got {H}x{W}; build the model with the image size you use"
            )
        mixed = torch.matmul(self.matrix.to(x.dtype), x.reshape(B, H * W, C))  # (B, N, C)
        return mixed.view(B, H, W, C)


class SepConv(nn.Module):
    """ConvFormer's mixer (eq. 5): ``pwconv2(dwconv(StarReLU(pwconv1(X))))``, no biases, the inner width expanded."""

    def __init__(self, dim: int, expansion: float, kernel: int) -> None:
        super().__init__()
        mid = int(expansion * dim)
        self.pwconv1 = nn.Linear(dim, mid, bias=False)  # a 1x1 convolution on a channels-last map
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(mid, mid, kernel, padding=kernel // 2, groups=mid, bias=False)
        self.pwconv2 = nn.Linear(mid, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C] -> [B, H, W, C]``."""
        h = self.act1(self.pwconv1(x))
        h = self.dwconv(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out: Tensor = self.pwconv2(h)
        return out


class MapAttention(Attention):
    """Core's bidirectional self-attention over the ``H * W`` tokens of a channels-last map."""

    def forward(self, x: Tensor, **_: Any) -> Tensor:
        """``[B, H, W, C] -> [B, H, W, C]``: every token attends to every token of the map."""
        B, H, W, C = x.shape
        out: Tensor = super().forward(x.reshape(B, H * W, C))
        return out.view(B, H, W, C)


def token_mixer(config: MetaFormerConfig, kind: str, dim: int, side: int) -> nn.Module:
    """The mixer ``kind`` for a stage of width ``dim`` whose map is ``side x side`` at ``config.image_size``."""
    if kind == "identity":
        return nn.Identity()
    if kind == "random":
        return RandomMixing(side)
    if kind == "pooling":
        return Pooling(config.pool_size)
    if kind == "sepconv":
        return SepConv(dim, config.sepconv_expansion, config.sepconv_kernel)
    heads = max(dim // config.head_dim, 1)
    return MapAttention(dim, heads, head_dim=config.head_dim, causal=False, bias=False)


# -- block, stage, stem, head -----------------------------------------------------------------------------------------
class MetaFormerBlock(nn.Module):
    """Eqs. (1)-(2) on ``[B, H, W, C]``: ``X = ResScale(X) + LayerScale(Mixer(Norm(X)))``, then the MLP the same way."""

    def __init__(self, config: MetaFormerConfig, kind: str, dim: int, side: int, *, res_scale: bool, drop_path: float):
        super().__init__()
        c = config

        def scale(init: float | None) -> nn.Module:
            return LayerScale(dim, init) if init is not None else nn.Identity()

        self.norm1 = block_norm(c, dim)
        self.token_mixer = token_mixer(c, kind, dim, side)
        self.layer_scale1 = scale(c.layer_scale)
        self.res_scale1 = scale(c.res_scale if res_scale else None)
        self.norm2 = block_norm(c, dim)
        self.mlp = FeedForward(dim, int(c.mlp_ratio * dim), activation="identity", bias=c.mlp_bias)
        self.mlp.act = mlp_activation(c.activation)  # StarReLU has learnable scalars, so it is no named activation
        self.layer_scale2 = scale(c.layer_scale)
        self.res_scale2 = scale(c.res_scale if res_scale else None)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C] -> [B, H, W, C]``."""
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path(self.token_mixer(self.norm1(x))))  # eq. (1)
        out: Tensor = self.res_scale2(x) + self.layer_scale2(self.drop_path(self.mlp(self.norm2(x))))  # eq. (2)
        return out


class Downsampling(nn.Module):
    """``conv(norm(x))`` on ``[B, C, H, W]``: the stem (norm after) or a 3x3/2 stage transition (norm before)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, *, norm: bool, norm_first: bool
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding)
        self.norm = get_norm("layernorm_nobias", c_in if norm_first else c_out, eps=1e-6) if norm else None

    def _norm(self, x: Tensor) -> Tensor:
        if self.norm is None:
            return x
        out: Tensor = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # over channels
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H', W']``."""
        if self.norm_first:
            return self.conv(self._norm(x))  # type: ignore[no-any-return]
        return self._norm(self.conv(x))


class MetaFormerStage(nn.Module):
    """``[B, C, H, W] -> [B, C', H', W']``: an optional downsampling, then blocks on the channels-last map."""

    def __init__(self, downsample: nn.Module | None, blocks: list[MetaFormerBlock]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Downsample, then the blocks (channels-last inside, as the authors' code)."""
        x = self.downsample(x)
        out: Tensor = self.blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return out.contiguous()


class MlpHead(nn.Module):
    """The MetaFormer Baselines classifier: ``fc2(LN(ReLU(fc1(x))²))`` with a 4x hidden layer (§4, released code)."""

    def __init__(self, dim: int, num_classes: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = get_activation("relu2")
        self.norm = get_norm("layernorm", hidden, eps=1e-6)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, dim] -> [B, num_classes]``."""
        out: Tensor = self.fc2(self.norm(self.act(self.fc1(x))))
        return out


class MetaFormer(ImageBackbone):
    """MetaFormer (Yu et al. 2022): stem, four stages of eq. (1)-(2) blocks, pooling, LayerNorm, head."""

    config_class = MetaFormerConfig
    config: MetaFormerConfig

    def __init__(self, config: MetaFormerConfig) -> None:
        super().__init__(config)
        c = config
        p = c.patch_size
        self.stem = Downsampling(c.in_chans, c.dims[0], 2 * p - 1, p, p // 2, norm=c.downsample_norm, norm_first=False)
        sides = c.stage_sizes(c.image_size)
        rates = iter(stochastic_depth_rates(c.drop_path_rate, sum(c.depths)))
        n = len(c.depths)
        reduction = p
        for i, (depth, dim, kind) in enumerate(zip(c.depths, c.dims, c.token_mixers, strict=True)):
            downsample = None
            if i > 0 and dim != c.dims[i - 1]:
                downsample = Downsampling(c.dims[i - 1], dim, 3, 2, 1, norm=c.downsample_norm, norm_first=True)
                reduction *= 2
            res_scale = c.res_scale is not None and i >= n - c.res_scale_stages
            blocks = [
                MetaFormerBlock(c, kind, dim, sides[i], res_scale=res_scale, drop_path=next(rates))
                for _ in range(depth)
            ]
            self.stages.append(MetaFormerStage(downsample, blocks))
            self.feature_info.append(FeatureInfo(dim, reduction, f"stages.{i}"))
        #: The LayerNorm after pooling (the authors' ``norm`` before the head; timm's ``head.norm``).
        self.head_norm = get_norm("layernorm", c.dims[-1], eps=1e-6)
        self.init_head(c.dims[-1])
        self.reset_parameters()

    def init_head(self, num_features: int) -> None:
        """A linear classifier, or the MLP head of MetaFormer Baselines (``head='mlp'``); none for 0 classes."""
        super().init_head(num_features)
        if self.config.num_classes and self.config.head == "mlp":
            self.head = MlpHead(num_features, self.config.num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised classifier of the configured kind for ``num_classes`` (0: none)."""
        super().reset_classifier(num_classes, global_pool)
        if num_classes and self.config.head == "mlp":
            device = next(self.parameters()).device
            self.head = MlpHead(self.num_features, num_classes).to(device)

    def reset_parameters(self) -> None:
        """The released code's init: ``N(0, 0.02²)`` truncated at ±2 for convolutions and linears, zero biases;
        unit norms, scales at their initial gains, StarReLU at ``(1, 0)``, a fresh random-mixing matrix."""
        super().reset_parameters()
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, StarReLU):  # inside core's FeedForward, whose reset covers its linears only
                    m.reset_parameters()

    def pool(self, features: Tensor) -> Tensor:
        """Pool by ``global_pool``, then the head's LayerNorm (over the channels of the map when not pooling)."""
        pooled = super().pool(features)
        if pooled.dim() == 4:
            out: Tensor = self.head_norm(pooled.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return out
        normed: Tensor = self.head_norm(pooled)
        return normed


# -- timm checkpoints -------------------------------------------------------------------------------------------------
_WHO = "timm metaformer"
_LINEAR_1X1 = re.compile(r".*\.(token_mixer\.pwconv[12]|mlp\.(up|down)_proj)\.weight")


def _timm_mixers(source: Any, state_dict: dict[str, Tensor], n: int) -> list[str]:
    """Each stage's mixer: attention and sepconv from their weights; pooling or identity from the module types."""
    kinds = []
    for i in range(n):
        prefix = f"stages.{i}.blocks.0.token_mixer."
        if prefix + "qkv.weight" in state_dict:
            kinds.append("attention")
        elif prefix + "pwconv1.weight" in state_dict:
            kinds.append("sepconv")
        elif isinstance(source, nn.Module) and type(source.get_submodule(prefix[:-1])).__name__ == "Identity":
            kinds.append("identity")
        else:
            kinds.append("pooling")
    return kinds


def metaformer_config_from_timm(
    source: Any, state_dict: dict[str, Tensor], arch: str, **overrides: Any
) -> MetaFormerConfig:
    """The config of ``arch`` (metaformer, poolformer or caformer) that a timm ``MetaFormer`` checkpoint fits."""
    sd = state_dict
    stem = weight_shape(sd, "stem.conv.weight", who=_WHO)
    n = len({int(m.group(1)) for k in sd if (m := re.match(r"stages\.(\d+)\.blocks\.", k))})
    depths = tuple(len({k.split(".")[3] for k in sd if k.startswith(f"stages.{i}.blocks.")}) for i in range(n))
    dims = tuple(sd[f"stages.{i}.blocks.0.norm1.weight"].shape[0] for i in range(n))
    mixers = _timm_mixers(source, sd, n)
    b0 = "stages.0.blocks.0."
    fields: dict[str, Any] = {
        "in_chans": stem[1],
        "patch_size": (stem[-1] + 1) // 2,
        "depths": depths,
        "dims": dims,
        "token_mixers": tuple(mixers),
        "mlp_ratio": sd[b0 + "mlp.fc1.weight"].shape[0] / dims[0],
        "mlp_bias": b0 + "mlp.fc1.bias" in sd,
        "norm_bias": b0 + "norm1.bias" in sd,
        "downsample_norm": "stem.norm.weight" in sd,
        "layer_scale": 1e-5 if b0 + "layer_scale1.scale" in sd else None,
    }
    fields["activation"] = "starrelu" if b0 + "mlp.act.scale" in sd else "gelu"
    res = [i for i in range(n) if f"stages.{i}.blocks.0.res_scale1.scale" in sd]
    if res != list(range(n - len(res), n)):
        raise CheckpointError(f"{_WHO} converter: ResScale in stages {res}, not in the last ones, is not supported")
    fields["res_scale"] = 1.0 if res else None
    fields["res_scale_stages"] = len(res) if res else 2
    if "sepconv" in mixers:
        first = f"stages.{mixers.index('sepconv')}.blocks.0.token_mixer."
        fields["sepconv_expansion"] = sd[first + "pwconv1.weight"].shape[0] / dims[mixers.index("sepconv")]
        fields["sepconv_kernel"] = sd[first + "dwconv.weight"].shape[-1]
    if "head.fc.fc1.weight" in sd:
        fields["head"], fields["num_classes"] = "mlp", sd["head.fc.fc2.weight"].shape[0]
    else:
        fields["head"], fields["num_classes"] = "linear", sd["head.fc.weight"].shape[0] if "head.fc.weight" in sd else 0
    norm_is_group = arch == "poolformer"
    if isinstance(source, nn.Module):
        block: Any = source.get_submodule("stages.0.blocks.0")
        norm = block.norm1
        norm_is_group = "GroupNorm" in type(norm).__name__
        fields["norm_eps"] = float(norm.eps)
        mixer = block.token_mixer
        if type(mixer).__name__ == "Pooling":
            size = mixer.pool.kernel_size
            fields["pool_size"] = size if isinstance(size, int) else size[0]
        act = type(block.mlp.act).__name__.lower()
        fields["activation"] = {"gelu": "gelu", "starrelu": "starrelu", "relu": "relu", "silu": "silu"}.get(act, act)
        for i, kind in enumerate(mixers):
            if kind == "attention":
                fields["head_dim"] = source.get_submodule(f"stages.{i}.blocks.0.token_mixer").head_dim
                break
    else:
        fields["norm_eps"] = 1e-5 if norm_is_group and fields["norm_bias"] else 1e-6
    fields["norm"] = "groupnorm" if norm_is_group else "layernorm"
    if "attention" in mixers and "head_dim" not in fields:
        i = mixers.index("attention")
        width = sd[f"stages.{i}.blocks.0.token_mixer.qkv.weight"].shape[0] // 3
        fields["head_dim"] = 32 if max(dims[i] // 32, 1) * 32 == width else width
    return edifice.config(arch, **{**fields, **overrides})  # type: ignore[return-value]


def _split_qkv(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's fused ``qkv`` (rows ``[q; k; v]``) as core's ``q_proj``, ``k_proj``, ``v_proj``."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("token_mixer.qkv.weight"):
            base = key[: -len("qkv.weight")]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, 0), strict=True):
                out[f"{base}{name}.weight"] = part.contiguous()
        else:
            out[key] = value
    return out


_RULES: list[tuple[str, Any]] = [
    (r"stem\.(conv|norm)\.(.+)", r"stem.\1.\2"),
    (r"stages\.(\d+)\.downsample\.(conv|norm)\.(.+)", r"stages.\1.downsample.\2.\3"),
    (r"(stages\.\d+\.blocks\.\d+)\.(norm[12])\.(.+)", r"\1.\2.\3"),
    (r"(stages\.\d+\.blocks\.\d+)\.(layer|res)_scale([12])\.scale", r"\1.\2_scale\3.gamma"),
    (r"(stages\.\d+\.blocks\.\d+)\.token_mixer\.proj\.weight", r"\1.token_mixer.o_proj.weight"),
    (r"(stages\.\d+\.blocks\.\d+)\.token_mixer\.(.+)", r"\1.token_mixer.\2"),
    (r"(stages\.\d+\.blocks\.\d+)\.mlp\.fc1\.(.+)", r"\1.mlp.up_proj.\2"),
    (r"(stages\.\d+\.blocks\.\d+)\.mlp\.fc2\.(.+)", r"\1.mlp.down_proj.\2"),
    (r"(stages\.\d+\.blocks\.\d+)\.mlp\.act\.(scale|bias)", r"\1.mlp.act.\2"),
    (r"head\.norm\.(.+)", r"head_norm.\1"),
    (r"head\.fc\.(.+)", r"head.\1"),
]


def convert_timm_metaformer(source: Any, arch: str, model_class: type[MetaFormer], **overrides: Any) -> MetaFormer:
    """A timm ``MetaFormer`` (model or state dict) as the edifice entry ``arch`` built by ``model_class``."""
    state_dict = timm_state_dict(source, who=_WHO)
    config = metaformer_config_from_timm(source, state_dict, arch, **overrides)
    weights = rename_keys(_split_qkv(state_dict), _RULES, who=_WHO)
    weights = {k: v.flatten(1) if _LINEAR_1X1.fullmatch(k) and v.dim() == 4 else v for k, v in weights.items()}
    return load_converted(model_class, config, weights, who=_WHO)


def from_timm_metaformer(source: Any, **overrides: Any) -> MetaFormer:
    """Convert any timm ``MetaFormer`` (``convformer_*``, and poolformer/caformer models too) to ``metaformer``.

    The architecture is read off the weights (and, for a model, off its module types: pooling or identity mixers,
    GroupNorm or LayerNorm, the activation); ``overrides`` set other config fields.
    """
    return convert_timm_metaformer(source, "metaformer", MetaFormer, **overrides)
