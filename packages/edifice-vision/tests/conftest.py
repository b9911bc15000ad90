"""Fixtures of edifice-vision's tests: the ViT family's tiny timm references with redrawn weights, and comparisons."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from edifice.testing import redraw_parameters

TOL = 1e-5
#: timm's tiny ViT arguments matching the registry's tiny config (16x16 images, 4x4 patches, width 32, 2 blocks).
TIMM_TINY: dict[str, Any] = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4}


def timm_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name)`` at the tiny size, weights redrawn (so no constant init hides a mapping), eval."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **{**TIMM_TINY, **kwargs})
    return redraw_parameters(model, seed=1).eval()


def images(*shape: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def assert_same_backbone(ours: Any, theirs: Any, x: torch.Tensor, *, intermediates: bool = True) -> None:
    """Logits, pooled features and every block's feature map (timm's ``forward_intermediates``) agree."""
    torch.testing.assert_close(ours(x), theirs(x), atol=TOL, rtol=TOL)
    torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x), atol=TOL, rtol=TOL)
    if intermediates:
        final, maps = ours.forward_intermediates(x, norm=True)
        want_final, want_maps = theirs.forward_intermediates(x, norm=True)
        torch.testing.assert_close(final, want_final, atol=TOL, rtol=TOL)
        assert len(maps) == len(want_maps)
        for got, want in zip(maps, want_maps, strict=True):
            torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


@pytest.fixture
def vit_helpers() -> SimpleNamespace:
    """The helpers above (test modules are imported by path, so they cannot import each other)."""
    return SimpleNamespace(TOL=TOL, timm_model=timm_model, images=images, assert_same_backbone=assert_same_backbone)
