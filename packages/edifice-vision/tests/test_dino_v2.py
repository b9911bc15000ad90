"""``dino_v2``: parity with transformers' ``Dinov2Model`` / ``Dinov2WithRegistersModel`` and timm's DINOv2 ViTs.

The signature is parity on redrawn weights -- LayerScale, the SwiGLU width rule, register tokens without positions
and the non-antialiased (Dinov2) or antialiased (with registers) bicubic resampling -- at the training size and at
two other sizes, through the converters users call on the released checkpoints.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import redraw_parameters, signature

transformers = pytest.importorskip("transformers")
Dinov2Config, Dinov2Model = transformers.Dinov2Config, transformers.Dinov2Model
RegConfig, RegModel = transformers.Dinov2WithRegistersConfig, transformers.Dinov2WithRegistersModel
COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 16, "patch_size": 4}
SIZES = [(16, 16), (24, 12), (8, 8)]


def hf_model(registers: int = 0, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    if registers:
        model = RegModel(RegConfig(**COMMON, num_register_tokens=registers, **kwargs))
    else:
        model = Dinov2Model(Dinov2Config(**COMMON, **kwargs))
    return redraw_parameters(model, seed=1).eval()


@signature("dino_v2")
@pytest.mark.parametrize(
    ("registers", "options"),
    [(0, {}), (0, {"use_swiglu_ffn": True}), (2, {})],
    ids=["mlp", "swiglu", "registers"],
)
def test_matches_transformers_dinov2(registers: int, options: dict[str, Any], vit_helpers: Any) -> None:
    hf = hf_model(registers, **options)
    ours = edifice.convert("transformers.Dinov2Model", hf)
    assert type(ours).__name__ == "DINOv2" and ours.num_prefix_tokens == 1 + registers
    for size in SIZES:
        x = vit_helpers.images(2, 3, *size)
        with torch.no_grad():
            out = hf(pixel_values=x)
            torch.testing.assert_close(ours.forward_features(x), out.last_hidden_state, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours(x), out.pooler_output, atol=1e-5, rtol=1e-5)


@signature("dino_v2")
def test_matches_timm_dinov2_with_registers(vit_helpers: Any) -> None:
    theirs = vit_helpers.timm_model("vit_small_patch14_reg4_dinov2", num_classes=0, dynamic_img_size=True)
    ours = edifice.convert("timm.VisionTransformer.dinov2", theirs)
    assert ours.config.num_register_tokens == 4
    for size in SIZES:
        vit_helpers.assert_same_backbone(ours, theirs, vit_helpers.images(2, 3, *size))


def test_swiglu_width_follows_dinov2() -> None:
    config = edifice.config("dino_v2", d_model=1536, n_heads=24, ffn="swiglu")
    assert config.ffn_width() == 4096  # ViT-g/14: 2/3 of 6144, a multiple of 8
    assert edifice.config("dino_v2").ffn_width() == 3072


def test_layer_scale_starts_at_its_init() -> None:
    from edifice_vision.configs.vit import TINY

    model = edifice.build("dino_v2", **TINY)
    gains = [model.stages[0].ls1.gamma, model.stages[1].ls2.gamma]
    assert all(torch.all(g == 1e-5) for g in gains)
