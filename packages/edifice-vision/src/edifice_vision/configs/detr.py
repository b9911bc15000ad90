"""Config of ``detr``: DEtection TRansformer, set prediction with a Hungarian loss (Carion et al. 2020, torch-free).

The model is :mod:`edifice_vision.detr`: a ResNet backbone (the ``resnet`` entry's blocks, BatchNorm frozen), a 1x1
projection to ``d_model``, a 2-D sine positional encoding, a transformer encoder-decoder whose decoder turns
``num_queries`` learned object queries into ``num_queries`` predictions, a linear class head (``num_classes + 1``
logits, the last one "no object") and a 3-layer MLP box head (sigmoid ``(cx, cy, w, h)`` relative to the image).
The defaults are the paper's DETR-R50 (Table 1; the authors' ``main.py`` defaults).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Converter, Paper, field
from edifice.config import ArchConfig
from edifice.spec import TensorSpec

__all__ = ["CONVERTERS", "SPECS", "DetrConfig", "detection_outputs", "image_and_mask_inputs"]

CARION = Paper("End-to-End Object Detection with Transformers", "Carion, Massa, Synnaeve et al.", 2020, "2005.12872")


@dataclasses.dataclass(kw_only=True)
class DetrConfig(ArchConfig):
    """DETR: ResNet features -> transformer encoder-decoder over object queries -> class and box per query."""

    arch: str = field("detr", "Registry name of the architecture this config builds.")
    in_chans: int = field(3, "Channels of the input images.")
    num_classes: int = field(91, "Object classes (the head adds one 'no object' logit); COCO ids give 91.")
    num_queries: int = field(100, "Object queries: the most objects one image can hold (N of §3.1).")
    d_model: int = field(256, "Width of the transformer (d of §3.2).")
    n_heads: int = field(8, "Attention heads.")
    num_encoder_layers: int = field(6, "Encoder layers (self-attention over the feature map).")
    num_decoder_layers: int = field(6, "Decoder layers (self-attention over the queries, cross-attention to memory).")
    ffn_dim: int = field(2048, "Hidden width of the feed-forward networks.")
    dropout: float = field(0.1, "Dropout on attention weights, FFN activations and residual branches.")
    norm_position: str = field("post", "'post' (the paper's LayerNorm after each residual) or 'pre' (authors' option).")
    norm_eps: float = field(1e-5, "LayerNorm epsilon.")
    backbone_block: str = field("bottleneck", "ResNet block of the backbone: 'basic' or 'bottleneck'.")
    backbone_layers: tuple[int, ...] = field((3, 4, 6, 3), "ResNet blocks per stage (ResNet-50: (3, 4, 6, 3)).")
    backbone_channels: tuple[int, ...] = field((64, 128, 256, 512), "ResNet inner width of each stage.")
    backbone_stem_width: int = field(64, "ResNet stem channels.")
    backbone_stem_type: str = field("", "ResNet stem: '' (7x7), 'deep' or 'deep_tiered' (as the resnet entry).")
    backbone_avg_down: bool = field(False, "ResNet-D average-pool shortcuts in the backbone.")
    frozen_stages: int = field(2, "Backbone stages (stem = 1, then layer1, ...) whose weights do not train (DETR: 2).")
    aux_loss: bool = field(True, "Add the Hungarian loss after every decoder layer (auxiliary decoding losses, §3.2).")
    class_cost: float = field(1.0, "Matching cost weight of -p(class) (lambda_cls of Eq. 1; authors' set_cost_class).")
    bbox_cost: float = field(5.0, "Matching cost weight of the L1 box distance (lambda_L1 of Eq. 1-2).")
    giou_cost: float = field(2.0, "Matching cost weight of -GIoU (lambda_iou of Eq. 1-2).")
    bbox_loss_weight: float = field(5.0, "Loss weight of the L1 box term (lambda_L1).")
    giou_loss_weight: float = field(2.0, "Loss weight of the GIoU term (lambda_iou).")
    eos_coef: float = field(0.1, "Cross-entropy weight of the 'no object' class (the paper's down-weighting by 10).")

    aliases: ClassVar[Mapping[str, str]] = {
        "in_channels": "in_chans",
        "num_channels": "in_chans",
        "hidden_dim": "d_model",
        "num_heads": "n_heads",
        "nheads": "n_heads",
        "enc_layers": "num_encoder_layers",
        "dec_layers": "num_decoder_layers",
        "dim_feedforward": "ffn_dim",
        "backbone_stages": "backbone_layers",
        "eos_coefficient": "eos_coef",
    }

    def validate(self) -> None:
        """Positive sizes, heads dividing an even width, the backbone's choices, weights and rates in range."""
        super().validate()
        self.check_positive(
            "in_chans", "num_classes", "num_queries", "d_model", "n_heads", "num_decoder_layers", "ffn_dim"
        )
        self.check_positive("num_encoder_layers", "frozen_stages", allow_zero=True)
        self.check_positive("norm_eps", "backbone_stem_width")
        self.check_divides("n_heads", "d_model")
        if self.d_model % 2:
            self.fail("d_model", "must be even (half the channels encode y, half x in the sine positional encoding)")
        self.check_range("dropout", 0.0, 1.0)
        if self.dropout == 1.0:
            self.fail("dropout", "must be < 1")
        self.check_choice("norm_position", ("post", "pre"))
        self.check_choice("backbone_block", ("basic", "bottleneck"))
        self.check_choice("backbone_stem_type", ("", "deep", "deep_tiered"))
        if not self.backbone_layers or any(n < 1 for n in self.backbone_layers):
            self.fail("backbone_layers", "must list at least one stage, each with >= 1 block")
        if len(self.backbone_channels) != len(self.backbone_layers) or any(c < 1 for c in self.backbone_channels):
            self.fail("backbone_channels", f"must give one positive width per stage ({len(self.backbone_layers)})")
        if self.frozen_stages > len(self.backbone_layers) + 1:
            self.fail("frozen_stages", f"must be <= {len(self.backbone_layers) + 1} (stem + backbone stages)")
        for name in ("class_cost", "bbox_cost", "giou_cost"):
            self.check_positive(name, allow_zero=True)
        if self.class_cost == self.bbox_cost == self.giou_cost == 0:
            self.fail("class_cost", "the matching costs cannot all be 0")
        for name in ("bbox_loss_weight", "giou_loss_weight", "eos_coef"):
            self.check_positive(name, allow_zero=True)


def image_and_mask_inputs() -> dict[str, TensorSpec]:
    """Inputs of a detector: ``images [B, in_chans, H, W]`` and an optional ``pixel_mask [B, H, W]`` (True = valid)."""
    return {
        "images": TensorSpec(("B", "in_chans", "H", "W"), doc="Images, channels first (any size)."),
        "pixel_mask": TensorSpec(
            ("B", "H", "W"),
            dtype="bool",
            domain="bool",
            optional=True,
            doc="True on real pixels, False on padding (images of different sizes padded into one batch).",
        ),
    }


def detection_outputs() -> dict[str, TensorSpec]:
    """Outputs of a set-prediction detector: per-query class logits and normalised ``(cx, cy, w, h)`` boxes."""
    return {
        "logits": TensorSpec(
            ("B", "num_queries", "num_classes + 1"), doc="Class logits per query; the last is 'no object'."
        ),
        "boxes": TensorSpec(
            ("B", "num_queries", 4), domain="float[0, 1]", doc="Boxes (cx, cy, w, h), relative to the image size."
        ),
    }


SPECS = (
    ArchSpec(
        name="detr",
        family="detection",
        distribution="edifice-vision",
        summary="DETR: ResNet + transformer encoder-decoder over object queries, trained by a Hungarian set loss.",
        paper=CARION,
        config="edifice_vision.configs.detr:DetrConfig",
        model="edifice_vision.detr:Detr",
        inputs=image_and_mask_inputs(),
        outputs=detection_outputs(),
        tiny={
            "d_model": 16,
            "n_heads": 2,
            "num_encoder_layers": 1,
            "num_decoder_layers": 2,
            "ffn_dim": 32,
            "num_queries": 4,
            "num_classes": 3,
            "backbone_block": "basic",
            "backbone_layers": (1, 1),
            "backbone_channels": (8, 16),
            "backbone_stem_width": 8,
        },
        verification="parity:transformers.DetrForObjectDetection",
        grad_exempt={
            "decoder.0.self_attn.v_proj.weight": "the first decoder layer's target is zero (object queries enter as "
            "positional encodings added to queries and keys, §3.2), so its self-attention values are the bias alone",
        },
        interop=("transformers.DetrForObjectDetection",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.detr",
        "detr",
        "edifice_vision.detr:from_transformers",
        "transformers DetrForObjectDetection with a timm ResNet backbone (facebook/detr-resnet-50/101; model, or state "
        "dict with its config).",
    ),
)
