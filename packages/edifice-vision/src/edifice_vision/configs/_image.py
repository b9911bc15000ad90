"""The torch-free half of every image backbone: its base config and its tensor specs.

An image backbone maps ``images [B, in_chans, H, W]`` to ``logits [B, num_classes]``, or with ``num_classes = 0`` to
pooled ``features [B, num_features]`` (timm's convention). Every entry's config subclasses :class:`ImageConfig` and
builds its spec with :func:`image_spec`, so fields, aliases and shapes read the same across the family. The torch
half is :class:`edifice_vision._backbone.ImageBackbone`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from edifice import ArchSpec, Paper
from edifice.config import ArchConfig, field
from edifice.spec import TensorSpec

__all__ = ["GLOBAL_POOLS", "ImageConfig", "image_inputs", "image_outputs", "image_spec"]

#: Pooling choices before the head: spatial mean or max, the class token, or none (the head sees the feature map).
GLOBAL_POOLS = ("avg", "max", "token", "")


@dataclasses.dataclass(kw_only=True)
class ImageConfig(ArchConfig):
    """Base config of image backbones: input channels, classifier, nominal image size, pooling and regularisation."""

    in_chans: int = field(3, "Channels of the input images.")
    num_classes: int = field(1000, "Classes of the classifier head; 0 drops the head and returns pooled features.")
    image_size: int = field(224, "Side of the training images (position embeddings are sized for it).")
    global_pool: str = field("avg", "Pooling before the head: 'avg', 'max', 'token' (class token) or '' (none).")
    drop_rate: float = field(0.0, "Dropout on the pooled features before the classifier.")
    drop_path_rate: float = field(0.0, "Stochastic depth: the drop rate of the last block (linear from 0).")

    #: Names of the original Edifice options (and of timm's arguments), accepted by ``edifice.config``.
    aliases: ClassVar[Mapping[str, str]] = {
        "num_channels": "in_chans",
        "in_channels": "in_chans",
        "img_size": "image_size",
        "input_size": "image_size",
        "dropout": "drop_rate",
    }
    #: The ``global_pool`` values this architecture accepts (a subclass narrows it).
    pool_choices: ClassVar[tuple[str, ...]] = ("avg", "max", "")

    def validate(self) -> None:
        """Check sizes are positive, rates lie in [0, 1) and the pooling is one this architecture has."""
        super().validate()
        self.check_positive("in_chans", "image_size")
        self.check_positive("num_classes", allow_zero=True)
        for name in ("drop_rate", "drop_path_rate"):
            self.check_range(name, 0.0, 1.0)
            if getattr(self, name) == 1.0:
                self.fail(name, "must be < 1")
        self.check_choice("global_pool", self.pool_choices)


def image_inputs() -> dict[str, TensorSpec]:
    """Input spec of an image backbone: ``images [B, in_chans, H, W]``."""
    return {"images": TensorSpec(("B", "in_chans", "H", "W"), doc="Images, channels first.")}


def image_outputs(num_features: str) -> dict[str, TensorSpec]:
    """Output specs: ``logits [B, num_classes]``, or ``features [B, num_features]`` when ``num_classes = 0``.

    ``num_features`` is a spec expression over the config's fields (e.g. ``"d_model"`` or ``"d_model * 8"``).
    """
    return {
        "logits": TensorSpec(("B", "num_classes"), when="num_classes > 0", doc="Class logits."),
        "features": TensorSpec(("B", num_features), when="num_classes == 0", doc="Pooled features (no head)."),
    }


def image_spec(
    name: str,
    *,
    family: str,
    summary: str,
    paper: Paper | None,
    config: str,
    model: str,
    num_features: str,
    tiny: Mapping[str, Any],
    verification: str,
    **options: Any,
) -> ArchSpec:
    """The :class:`ArchSpec` of an image backbone of ``family`` (vision or convolutional) in edifice-vision."""
    return ArchSpec(
        name=name,
        family=family,
        distribution="edifice-vision",
        summary=summary,
        paper=paper,
        config=config,
        model=model,
        inputs=image_inputs(),
        outputs=image_outputs(num_features),
        tiny=tiny,
        verification=verification,
        **options,
    )
