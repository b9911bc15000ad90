"""Config of ``deit``: the data-efficient image Transformer with its distillation token (torch-free).

The model is :mod:`edifice_vision.deit` (Touvron et al., ICML 2021): a ViT whose sequence carries a second learned
token, trained to reproduce a teacher's predictions through its own head; at test time the two heads are averaged.
A DeiT without the distillation token is the plain ``vit`` entry (same architecture, other training recipe).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_vision.configs.vit import TINY, ViTConfig, vit_spec

__all__ = ["CONVERTERS", "SPECS", "DeiTConfig"]

TOUVRON = Paper(
    "Training data-efficient image transformers & distillation through attention", "Touvron et al.", 2021, "2012.12877"
)


@dataclasses.dataclass(kw_only=True)
class DeiTConfig(ViTConfig):
    """DeiT: tokens ``[class, distillation, patches] + E_pos``; logits ``(head(z^cls) + head_dist(z^dist)) / 2``."""

    arch: str = field("deit", "Registry name of the architecture this config builds.")
    global_pool: str = field("token", "Pooling: 'token' (the class and distillation tokens, each to its head).")
    distillation_type: str = field("hard", "Distillation objective of loss(): 'hard' (eq. 3) or 'soft' (eq. 2).")
    distillation_alpha: float = field(0.5, "Weight λ of the distillation term in the soft objective (eq. 2).")
    distillation_tau: float = field(1.0, "Temperature τ of the soft objective (eq. 2).")

    pool_choices: ClassVar[tuple[str, ...]] = ("token",)

    def validate(self) -> None:
        """A class token, 'hard'/'soft' distillation, λ in [0, 1] and τ > 0."""
        super().validate()
        if not self.class_token:
            self.fail("class_token", "DeiT needs its class token (True)")
        self.check_choice("distillation_type", ("hard", "soft"))
        self.check_range("distillation_alpha", 0.0, 1.0)
        self.check_positive("distillation_tau")


SPECS = (
    vit_spec(
        "deit",
        "DeiT: a ViT with a distillation token and head (heads averaged at test time); distillation losses.",
        TOUVRON,
        config="edifice_vision.configs.deit:DeiTConfig",
        model="edifice_vision.deit:DeiT",
        tiny=TINY,
        verification="parity:timm.models.deit.VisionTransformerDistilled",
        interop=("timm.models.deit.VisionTransformerDistilled",),
    ),
)

CONVERTERS = (
    Converter(
        "timm.VisionTransformerDistilled",
        "deit",
        "edifice_vision._vit_convert:from_timm_deit",
        "timm deit_*_distilled_* checkpoints (model or state dict + config overrides): images -> averaged logits.",
    ),
)
