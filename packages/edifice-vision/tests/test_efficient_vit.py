"""``efficient_vit``: parity with timm's EfficientViT (MSRA) through the converter; the cascade and the init.

The signature: timm ``EfficientVitMsra`` models at tiny widths (two and three heads, 3x3 windows, so maps are split
into padded windows) with redrawn weights and BatchNorm statistics are converted by
``edifice.convert("timm.efficientvit_msra", ...)`` and must give timm's logits, features and every feature level at
several image sizes, non-square included (fp32, 1e-5). The attention runs through ``edifice.ops.sdpa`` (its mutation
fails it); heads attending independently (no cascade, eq. 3) fail it too.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from timm.models.efficientvit_msra import EfficientVitMsra

import edifice
from edifice import ops
from edifice.errors import CheckpointError
from edifice.testing import redraw_parameters, signature
from edifice_vision._timm_convert import assert_matches_timm, redraw_batchnorm
from edifice_vision.efficient_vit import CascadedGroupAttention, EfficientViTBlock

TIMM_TINY: dict[str, Any] = {
    "img_size": 96,
    "embed_dim": (16, 32, 48),
    "key_dim": (4, 4, 4),
    "depth": (1, 2, 1),
    "num_heads": (2, 2, 3),
    "window_size": (3, 3, 3),
    "kernels": (5, 3, 3),
    "num_classes": 5,
}


def timm_efficientvit(**kwargs: Any) -> EfficientVitMsra:
    torch.manual_seed(0)
    model = EfficientVitMsra(**{**TIMM_TINY, **kwargs}).eval()
    redraw_parameters(model, seed=1)
    return redraw_batchnorm(model, seed=1)


def images(h: int = 96, w: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("efficient_vit")
def test_converted_timm_efficientvit_matches_timm() -> None:
    theirs = timm_efficientvit()
    ours = edifice.convert("timm.efficientvit_msra", theirs)
    c = ours.config
    assert (c.embed_dim, c.depths, c.num_heads, c.key_dim, c.patch_size, c.image_size) == (
        (16, 32, 48),
        (1, 2, 1),
        (2, 2, 3),
        (4, 4, 4),
        16,
        96,
    )
    for h, w in [(96, 96), (80, 112)]:  # 6x6 maps in 3x3 windows; 5x7 maps in padded windows
        assert_matches_timm(ours, theirs, images(h, w, seed=h))


def _independent_heads(self: CascadedGroupAttention, x: torch.Tensor) -> torch.Tensor:
    """Group attention without the cascade: head j sees only its own split X_ij (eq. 3 dropped)."""
    B, _, H, W = x.shape
    bias = self.attention_biases[:, self.attention_bias_idxs]
    outs = []
    for j, (split, qkv, dw) in enumerate(zip(x.chunk(self.num_heads, 1), self.qkvs, self.dws, strict=True)):
        q, k, v = qkv(split).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
        q, k, v = (t.flatten(2).transpose(1, 2).unsqueeze(1) for t in (dw(q), k, v))
        out = ops.sdpa(q, k, v, attn_mask=bias[j])
        outs.append(out.squeeze(1).transpose(1, 2).reshape(B, self.val_dim, H, W))
    result: torch.Tensor = self.proj(torch.cat(outs, 1))
    return result


@signature("efficient_vit")
def test_without_the_cascade_parity_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = timm_efficientvit()
    ours = edifice.convert("timm.efficientvit_msra", theirs)
    assert_matches_timm(ours, theirs, images())
    monkeypatch.setattr(CascadedGroupAttention, "forward", _independent_heads)
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def test_state_dict_conversion_reads_windows_off_the_bias_tables() -> None:
    theirs = timm_efficientvit()
    ours = edifice.convert("timm.efficientvit_msra", theirs.state_dict(), image_size=96)
    assert ours.config.window_size == (3, 3, 2)  # the last stage's 2x2 map holds a 2x2 window (timm shrinks it)
    torch.testing.assert_close(ours.eval()(images=images()), theirs(images()), atol=1e-5, rtol=1e-5)
    state = dict(theirs.state_dict())
    state["stages.0.blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="extra"):
        edifice.convert("timm.efficientvit_msra", state)


def test_every_sandwich_block_starts_as_the_identity() -> None:
    # The released code zeroes the BN gain of each DWConv, FFN output and attention projection in the blocks.
    model = edifice.build("efficient_vit", **edifice.get_spec("efficient_vit").tiny).train()
    x = torch.randn(2, 8, 8, 8)
    block = next(m for m in model.modules() if isinstance(m, EfficientViTBlock))
    torch.testing.assert_close(block(x), x)
    cga = next(m for m in model.modules() if isinstance(m, CascadedGroupAttention))
    assert float(cga.attention_biases.detach().abs().max()) == 0.0


def test_intermediates_follow_feature_info_and_the_head_is_bn_linear() -> None:
    model = edifice.build("efficient_vit", **edifice.get_spec("efficient_vit").tiny).eval()
    assert [(f.num_chs, f.reduction) for f in model.feature_info] == [(8, 2), (16, 4)]
    for size in (16, 20):
        maps = model.forward_intermediates(images(size, size), intermediates_only=True)
        assert [m.shape[-1] for m in maps] == [size // 2, -(-size // 4)]
    model.reset_classifier(3)
    assert type(model.head).__name__ == "NormLinear" and model(images=images(16, 16)).shape == (2, 3)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"num_heads": (4, 4)}, "num_heads"),
        ({"num_heads": (3, 4, 4)}, "num_heads"),
        ({"kernels": (5, 5)}, "kernels"),
        ({"patch_size": 12}, "patch_size"),
        ({"global_pool": ""}, "global_pool"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        edifice.config("efficient_vit", **overrides)
