"""DETR: end-to-end object detection as direct set prediction with a transformer and a Hungarian loss.

Paper: "End-to-End Object Detection with Transformers", Carion, Massa, Synnaeve, Usunier, Kirillov & Zagoruyko,
ECCV 2020, https://arxiv.org/abs/2005.12872. Implemented (§3.2, Fig. 2 and Fig. 10 of the appendix):

* backbone: a ResNet (the ``resnet`` entry's network, :mod:`edifice_vision.resnet`) gives ``f [B, C, H/32, W/32]``
  (its last stage); BatchNorm is frozen and the stem and first stage do not train (§A.4 and the authors' code);
* a 1x1 convolution reduces ``C`` to ``d``, the map is flattened to ``HW`` tokens;
* the fixed 2-D sine positional encoding of §A.4 (authors' ``PositionEmbeddingSine(normalize=True)``): ``d / 2``
  channels encode the row and ``d / 2`` the column, each as ``sin, cos`` of ``pos / 10000^(2i / (d/2))`` with the
  position the running count of valid pixels normalised to ``(0, 2 pi]``;
* the encoder: self-attention with the positional encoding added to queries and keys (not values) at every layer,
  then an FFN, each a post-normed residual (Fig. 10);
* the decoder: ``N`` learned object queries (positional encodings added to queries and keys of the self-attention
  and to queries of the cross-attention, the memory's encoding added to its keys) on a target that starts at zero;
  one LayerNorm shared by every layer's output ("auxiliary decoding losses", §3.2);
* prediction FFNs (§3.1): a linear class head over ``num_classes + 1`` (the last class is "no object", the paper's
  empty set) and a 3-layer ReLU MLP giving ``sigmoid(b) = (cx, cy, w, h)`` relative to the image;
* the loss (:meth:`Detr.loss`): Eqs. (1)-(2) in :mod:`edifice_vision._detection`, over every decoder layer.

Attention is core's (:class:`~edifice.blocks.attention.CrossAttention` projections and ``edifice.ops.sdpa``), the FFN
core's :class:`~edifice.blocks.ffn.FeedForward`. ``pixel_mask`` (True on real pixels) is resized to the feature map
by nearest neighbour, hides padded keys and restarts the positional encoding inside the valid region.

Choices where the paper is silent, as in the authors' code (facebookresearch/detr): Xavier-uniform weights in the
transformer, PyTorch defaults elsewhere; ``norm_position='pre'`` is the authors' ``--pre_norm`` (then the encoder
ends with a LayerNorm). Deviations: the backbone's BatchNorm statistics are identity when built from scratch (DETR
always starts from an ImageNet backbone; load one with :func:`from_transformers` or the ``timm.resnet`` converter);
dilated C5 (DETR-DC5) is not offered.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

import edifice
from edifice.blocks.attention import CrossAttention
from edifice.blocks.ffn import FeedForward
from edifice.errors import CheckpointError
from edifice.model import Model
from edifice.outputs import model_output
from edifice_vision._detection import FrozenBatchNorm2d, Target, freeze_batch_norm, post_process, set_loss
from edifice_vision._timm_convert import load_converted, rename_keys
from edifice_vision.configs.detr import DetrConfig
from edifice_vision.configs.resnet import ResNetConfig
from edifice_vision.resnet import ResNet, resnet_config_from_timm
from edifice_vision.resnet import _rules as resnet_timm_rules

__all__ = ["Detr", "DetrOutput", "from_transformers", "sine_position_embedding"]


@model_output
class DetrOutput:
    """Per-query predictions of the last decoder layer."""

    logits: Tensor  #: ``[B, num_queries, num_classes + 1]``, the last class "no object"
    boxes: Tensor  #: ``[B, num_queries, 4]``, ``(cx, cy, w, h)`` in ``[0, 1]``


def sine_position_embedding(mask: Tensor, d_model: int, temperature: float = 10000.0) -> Tensor:
    """The 2-D sine encoding (§A.4) of a valid-pixel ``mask [B, H, W]``: ``[B, H * W, d_model]`` (y half, x half).

    Row and column positions are the running counts of valid pixels, normalised so the last valid one is ``2 pi``.
    """
    npf = d_model // 2
    valid = mask.to(torch.float32)
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    i = torch.arange(npf, device=mask.device, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / npf)  # (npf,)
    pos = []
    for coord in (y, x):
        angles = coord[..., None] / freq  # (B, H, W, npf)
        pos.append(torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(3))
    return torch.cat(pos, dim=-1).flatten(1, 2)  # (B, HW, d)


class DetrAttention(CrossAttention):
    """Multi-head attention whose queries, keys and values come from three inputs (positions added to q/k only)."""

    def forward(  # type: ignore[override]
        self, query: Tensor, key: Tensor, value: Tensor, *, key_mask: Tensor | None = None
    ) -> Tensor:
        """``query [B, T, d]`` attends keys ``[B, S, d]`` with ``value [B, S, d]``; ``key_mask [B, S]`` marks valid."""
        q = self._split(self.q_proj, query, self.n_heads, None)  # (B, H, T, D)
        k = self._split(self.k_proj, key, self.n_kv_heads, None)  # (B, H, S, D)
        v = self._split(self.v_proj, value, self.n_kv_heads, None)  # (B, H, S, D)
        attn_mask = key_mask[:, None, None, :] if key_mask is not None else None
        return self._attend(q, k, v, attn_mask=attn_mask)


def _attention(config: DetrConfig) -> DetrAttention:
    return DetrAttention(config.d_model, config.n_heads, bias=True, dropout=config.dropout)


class _Layer(nn.Module):
    """Residual sub-layers ``x + Dropout(f(.))`` with the LayerNorm after (post) or before (pre) each."""

    def __init__(self, config: DetrConfig, n_norms: int) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.norms = nn.ModuleList(nn.LayerNorm(config.d_model, eps=config.norm_eps) for _ in range(n_norms))
        self.dropout = nn.Dropout(config.dropout)
        self.ffn = FeedForward(config.d_model, config.ffn_dim, activation="relu", dropout=config.dropout)

    def _in(self, x: Tensor, i: int) -> Tensor:
        return self.norms[i](x) if self.pre_norm else x

    def _out(self, x: Tensor, y: Tensor, i: int) -> Tensor:
        x = x + self.dropout(y)
        return x if self.pre_norm else self.norms[i](x)


class DetrEncoderLayer(_Layer):
    """``x = Norm(x + Attn(x + pos, x + pos, x))``, ``x = Norm(x + FFN(x))`` (Fig. 10, encoder)."""

    def __init__(self, config: DetrConfig) -> None:
        super().__init__(config, 2)
        self.self_attn = _attention(config)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """``x [B, S, d]``, ``pos [B, S, d]``, ``mask [B, S]`` (True = valid) -> ``[B, S, d]``."""
        h = self._in(x, 0)
        x = self._out(x, self.self_attn(h + pos, h + pos, h, key_mask=mask), 0)
        return self._out(x, self.ffn(self._in(x, 1)), 1)


class DetrDecoderLayer(_Layer):
    """Self-attention over queries, cross-attention to the memory, FFN (Fig. 10, decoder)."""

    def __init__(self, config: DetrConfig) -> None:
        super().__init__(config, 3)
        self.self_attn = _attention(config)
        self.cross_attn = _attention(config)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """``tgt``/``query_pos [B, N, d]``, ``memory``/``pos [B, S, d]``, ``mask [B, S]`` -> ``[B, N, d]``."""
        h = self._in(tgt, 0)
        tgt = self._out(tgt, self.self_attn(h + query_pos, h + query_pos, h), 0)
        h = self._in(tgt, 1)
        tgt = self._out(tgt, self.cross_attn(h + query_pos, memory + pos, memory, key_mask=mask), 1)
        return self._out(tgt, self.ffn(self._in(tgt, 2)), 2)


class BoxHead(nn.Module):
    """The 3-layer perceptron with ReLU of §3.1 predicting ``(cx, cy, w, h)`` logits (sigmoid applied by the model)."""

    def __init__(self, d_model: int, n_layers: int = 3) -> None:
        super().__init__()
        dims = [d_model] * n_layers + [4]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., 4]``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def _backbone(config: DetrConfig) -> ResNet:
    """The ``resnet`` network without head, BatchNorm frozen, its first ``frozen_stages`` stages not trained."""
    resnet_config = ResNetConfig(
        in_chans=config.in_chans,
        num_classes=0,
        block=config.backbone_block,
        layers=config.backbone_layers,
        channels=config.backbone_channels,
        stem_width=config.backbone_stem_width,
        stem_type=config.backbone_stem_type,
        avg_down=config.backbone_avg_down,
        zero_init_last=False,  # with frozen BatchNorm a zeroed scale would silence the branch for good
    )
    backbone = freeze_batch_norm(ResNet(resnet_config))
    assert isinstance(backbone, ResNet)
    for stage in backbone.stages[: config.frozen_stages]:
        stage.requires_grad_(False)
    return backbone


class Detr(Model):
    """DETR (Carion et al. 2020): ``images [B, 3, H, W]`` -> ``logits [B, N, C + 1]``, ``boxes [B, N, 4]``."""

    config_class = DetrConfig
    config: DetrConfig

    def __init__(self, config: DetrConfig) -> None:
        super().__init__(config)
        self.backbone = _backbone(config)
        self.input_proj = nn.Conv2d(self.backbone.feature_info[-1].num_chs, config.d_model, 1)
        self.query_embed = nn.Embedding(config.num_queries, config.d_model)
        self.encoder = nn.ModuleList(DetrEncoderLayer(config) for _ in range(config.num_encoder_layers))
        pre = config.norm_position == "pre" and config.num_encoder_layers > 0
        self.encoder_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps) if pre else nn.Identity()
        self.decoder = nn.ModuleList(DetrDecoderLayer(config) for _ in range(config.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.class_head = nn.Linear(config.d_model, config.num_classes + 1)
        self.box_head = BoxHead(config.d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal backbone (identity frozen BatchNorm), Xavier-uniform transformer, PyTorch defaults elsewhere."""
        self.backbone.reset_parameters()
        for m in self.backbone.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.reset_parameters()
        for module in (self.input_proj, self.query_embed, self.class_head, *self.box_head.layers):
            module.reset_parameters()
        for stack in (self.encoder, self.decoder):  # authors' Transformer._reset_parameters
            for m in stack.modules():
                if isinstance(m, nn.Linear | nn.LayerNorm):
                    m.reset_parameters()
            for p in stack.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for norm in (self.encoder_norm, self.decoder_norm):
            if isinstance(norm, nn.LayerNorm):
                norm.reset_parameters()

    def forward(self, images: Tensor, pixel_mask: Tensor | None = None) -> DetrOutput:
        """Class logits and sigmoid boxes of every query after the last decoder layer."""
        logits, boxes = self.predict_all(images, pixel_mask)
        return DetrOutput(logits=logits[-1], boxes=boxes[-1])

    def predict_all(self, images: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The heads after every decoder layer: ``logits [L, B, N, C + 1]``, ``boxes [L, B, N, 4]``."""
        inputs = {"images": images} if pixel_mask is None else {"images": images, "pixel_mask": pixel_mask}
        self.check_inputs(**inputs)
        feats = self.backbone.forward_features(images)  # (B, C, h, w)
        B, _, h, w = feats.shape
        if pixel_mask is None:
            mask = torch.ones(B, h, w, dtype=torch.bool, device=images.device)
        else:  # nearest-neighbour resize of the valid-pixel mask to the feature map (authors' NestedTensor)
            mask = nn.functional.interpolate(pixel_mask[None].float(), size=(h, w))[0].bool()
        pos = sine_position_embedding(mask, self.config.d_model).to(feats.dtype)  # (B, hw, d)
        key_mask = mask.flatten(1)  # (B, hw)
        memory = self.input_proj(feats).flatten(2).transpose(1, 2)  # (B, hw, d)
        for layer in self.encoder:
            memory = self._run(layer, memory, pos, key_mask)
        memory = self.encoder_norm(memory)
        query_pos = self.query_embed.weight[None].expand(B, -1, -1)  # (B, N, d)
        tgt = torch.zeros_like(query_pos)
        outs = []
        for layer in self.decoder:
            tgt = self._run(layer, tgt, query_pos, memory, pos, key_mask)
            outs.append(self.decoder_norm(tgt))  # the shared final norm on every layer's output (aux losses)
        hs = torch.stack(outs)  # (L, B, N, d)
        return self.class_head(hs), self.box_head(hs).sigmoid()

    def _run(self, layer: nn.Module, *args: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training:
            out: Tensor = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            return out
        result: Tensor = layer(*args)
        return result

    def loss(self, images: Tensor, targets: Sequence[Target], pixel_mask: Tensor | None = None) -> dict[str, Tensor]:
        """The Hungarian loss (Eqs. 1-2) of the predictions for ``images`` against ``targets``.

        ``targets[b]`` holds ``labels [n_b]`` (in ``[0, num_classes)``) and ``boxes [n_b, 4]`` (cx, cy, w, h in
        ``[0, 1]``). Every decoder layer is supervised when ``config.aux_loss``; ``loss`` is the total to minimise.
        """
        logits, boxes = self.predict_all(images, pixel_mask)
        if not self.config.aux_loss:
            logits, boxes = logits[-1:], boxes[-1:]
        for t in targets:
            labels = t.get("labels", t.get("class_labels"))
            if labels is not None and labels.numel() and (labels.min() < 0 or labels.max() >= self.config.num_classes):
                raise ValueError(f"detr: target labels must lie in [0, {self.config.num_classes}), got {labels}")
        c = self.config
        return set_loss(
            logits,
            boxes,
            targets,
            class_cost=c.class_cost,
            bbox_cost=c.bbox_cost,
            giou_cost=c.giou_cost,
            bbox_loss_weight=c.bbox_loss_weight,
            giou_loss_weight=c.giou_loss_weight,
            eos_coef=c.eos_coef,
        )

    @staticmethod
    def post_process(
        output: DetrOutput, image_sizes: Tensor | Sequence[tuple[int, int]], *, threshold: float = 0.0
    ) -> list[dict[str, Tensor]]:
        """Scores, labels and pixel corner boxes per image (:func:`edifice_vision._detection.post_process`)."""
        return post_process(output.logits, output.boxes, image_sizes, threshold=threshold)


# -- transformers checkpoints --------------------------------------------------------------------------------------
_WHO = "transformers detr"
_BACKBONE = "model.backbone.model."
_ATTN = {"self_attn": "self_attn", "encoder_attn": "cross_attn"}
_NORM = {"self_attn_layer_norm": 0, "encoder_attn_layer_norm": 1}


def _decoder_norm(m: Any) -> str:
    index = _NORM.get(m.group(2), 2)  # final_layer_norm is the decoder's third, the encoder's second
    return f"decoder.{m.group(1)}.norms.{index}.{m.group(3)}"


#: transformers 4.x names (the hub's safetensors files), as transformers 5 renames them on load (conversion_mapping).
_LEGACY = [
    (re.compile(r"backbone\.conv_encoder\."), "backbone."),
    (re.compile(r"\.out_proj\."), ".o_proj."),
    (re.compile(r"layers\.(\d+)\.fc([12])\."), r"layers.\1.mlp.fc\2."),
]


def _modern_name(key: str) -> str:
    for pattern, repl in _LEGACY:
        key = pattern.sub(repl, key)
    return key


_RULES: list[tuple[str, Any]] = [
    (r"model\.input_projection\.(.+)", r"input_proj.\1"),
    (r"model\.query_position_embeddings\.(.+)", r"query_embed.\1"),
    (r"model\.encoder\.layers\.(\d+)\.self_attn\.(.+)", r"encoder.\1.self_attn.\2"),
    (r"model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)", r"encoder.\1.norms.0.\2"),
    (r"model\.encoder\.layers\.(\d+)\.final_layer_norm\.(.+)", r"encoder.\1.norms.1.\2"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.mlp\.fc1\.(.+)", r"\1.\2.ffn.up_proj.\3"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.mlp\.fc2\.(.+)", r"\1.\2.ffn.down_proj.\3"),
    (
        r"model\.decoder\.layers\.(\d+)\.(self_attn|encoder_attn)\.(.+)",
        lambda m: f"decoder.{m.group(1)}.{_ATTN[m.group(2)]}.{m.group(3)}",
    ),
    (r"model\.decoder\.layers\.(\d+)\.(\w+_layer_norm)\.(.+)", _decoder_norm),
    (r"model\.decoder\.layernorm\.(.+)", r"decoder_norm.\1"),
    (r"class_labels_classifier\.(.+)", r"class_head.\1"),
    (r"bbox_predictor\.(.+)", r"box_head.\1"),
]


def from_transformers(source: Any, config: Any = None, **overrides: Any) -> Detr:
    """Convert a transformers ``DetrForObjectDetection`` with a timm ResNet backbone to ``detr``.

    ``source`` is the model, or its state dict with ``config`` (a ``DetrConfig`` or its dict) for the head count,
    layer counts and loss weights the weights do not show; a state dict may use transformers 5 names or the 4.x names
    of the hub's files (``backbone.conv_encoder``, ``out_proj``, ``fc1``). ``overrides`` set other ``detr`` fields
    (e.g. ``dropout``). transformers' own ``ResNetBackbone`` (``use_timm_backbone=False``) is not supported; every
    released DETR checkpoint (facebook/detr-resnet-50, -101) uses the timm backbone.
    """
    if isinstance(source, nn.Module):
        config = source.config if config is None else config
        source = source.state_dict()
    if config is None:
        raise CheckpointError(f"{_WHO} converter: pass the DetrConfig with a state dict (heads are not in the weights)")
    cfg = config if isinstance(config, dict) else config.to_dict()
    state = {_modern_name(k): v.detach().clone() for k, v in source.items() if not k.endswith("num_batches_tracked")}
    backbone_sd = {k.removeprefix(_BACKBONE): v for k, v in state.items() if k.startswith(_BACKBONE)}
    if not backbone_sd or ("conv1.weight" not in backbone_sd and "conv1.0.weight" not in backbone_sd):
        raise CheckpointError(
            f"{_WHO} converter: no timm ResNet under {_BACKBONE!r} (transformers' ResNetBackbone is not supported)"
        )
    if cfg.get("dilation"):
        raise CheckpointError(f"{_WHO} converter: dilated C5 (DETR-DC5) is not supported")
    if cfg.get("position_embedding_type", "sine") != "sine":
        raise CheckpointError(f"{_WHO} converter: only the sine position embedding is supported")
    if cfg.get("activation_function", "relu") != "relu":
        raise CheckpointError(f"{_WHO} converter: the FFN activation must be relu")
    rn = resnet_config_from_timm(backbone_sd)
    fields: dict[str, Any] = {
        "in_chans": rn.in_chans,
        "num_classes": state["class_labels_classifier.weight"].shape[0] - 1,
        "num_queries": state["model.query_position_embeddings.weight"].shape[0],
        "d_model": state["model.input_projection.weight"].shape[0],
        "n_heads": cfg["encoder_attention_heads"],
        "num_encoder_layers": cfg["encoder_layers"],
        "num_decoder_layers": cfg["decoder_layers"],
        "ffn_dim": cfg["encoder_ffn_dim"],
        "dropout": cfg.get("dropout", 0.1),
        "backbone_block": rn.block,
        "backbone_layers": rn.layers,
        "backbone_channels": rn.channels,
        "backbone_stem_width": rn.stem_width,
        "backbone_stem_type": rn.stem_type,
        "backbone_avg_down": rn.avg_down,
        "aux_loss": cfg.get("auxiliary_loss", True),
        "class_cost": cfg.get("class_cost", 1.0),
        "bbox_cost": cfg.get("bbox_cost", 5.0),
        "giou_cost": cfg.get("giou_cost", 2.0),
        "bbox_loss_weight": cfg.get("bbox_loss_coefficient", 5.0),
        "giou_loss_weight": cfg.get("giou_loss_coefficient", 2.0),
        "eos_coef": cfg.get("eos_coefficient", 0.1),
    }
    if (
        cfg["decoder_attention_heads"] != cfg["encoder_attention_heads"]
        or cfg["decoder_ffn_dim"] != cfg["encoder_ffn_dim"]
    ):
        raise CheckpointError(f"{_WHO} converter: encoder and decoder must share heads and FFN width")
    detr_config = edifice.config("detr", **{**fields, **overrides})
    weights = {f"backbone.{k}": v for k, v in rename_keys(backbone_sd, resnet_timm_rules(rn), who=_WHO).items()}
    weights.update(rename_keys({k: v for k, v in state.items() if not k.startswith(_BACKBONE)}, _RULES, who=_WHO))
    return load_converted(Detr, detr_config, weights, who=_WHO)  # requires_grad stays the module's (frozen stages)
