"""``caformer``: parity with timm's CAFormer through the converter (separable convolutions, then attention).

The signature: a timm ``MetaFormer`` with ``caformer_s18``'s arguments at tiny widths (heads of 8), weights redrawn,
converted by ``edifice.convert("timm.caformer", ...)`` from the model and from its state dict, must give timm's logits,
features and every feature level at several image sizes (fp32, 1e-5). The attention runs through ``edifice.ops.sdpa``:
its mutation, or replacing the attention mixer by the identity, fails it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from timm.models import metaformer as tm

import edifice
from edifice.testing import redraw_parameters, signature
from edifice_vision._metaformer import MapAttention
from edifice_vision._timm_convert import assert_matches_timm

#: timm's caformer_s18 arguments, with heads of 8 channels for the tiny widths.
CAFORMER: dict[str, Any] = {
    "token_mixers": [tm.SepConv, tm.SepConv, tm.Attention, tm.Attention],
    "norm_layers": [tm.LayerNorm2dNoBias] * 2 + [tm.LayerNormNoBias] * 2,
    "head_dim": 8,
}


def timm_caformer(**kwargs: Any) -> tm.MetaFormer:
    torch.manual_seed(0)
    args = {"depths": (1, 2, 1, 2), "dims": (8, 16, 24, 32), "num_classes": 5, **CAFORMER, **kwargs}
    model = tm.MetaFormer(**args).eval()
    return redraw_parameters(model, seed=1)  # type: ignore[return-value]


def images(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("caformer")
def test_converted_timm_caformer_matches_timm() -> None:
    theirs = timm_caformer()
    ours = edifice.convert("timm.caformer", theirs)
    c = ours.config
    assert (c.token_mixers, c.head_dim, c.res_scale_stages, c.head) == (
        ("sepconv", "sepconv", "attention", "attention"),
        8,
        2,
        "mlp",
    )
    for h, w in [(32, 32), (48, 40)]:
        assert_matches_timm(ours, theirs, images(h, w, seed=h))
    from_sd = edifice.convert("timm.caformer", theirs.state_dict(), head_dim=8)
    torch.testing.assert_close(from_sd.eval()(images=images()), theirs(images()), atol=1e-5, rtol=1e-5)


@signature("caformer")
def test_without_attention_parity_fails() -> None:
    theirs = timm_caformer()
    ours = edifice.convert("timm.caformer", theirs)
    for m in ours.modules():
        if isinstance(m, MapAttention):
            m.forward = lambda x, **_: x  # type: ignore[method-assign]
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def test_head_dim_is_inferred_from_a_state_dict_of_32_channel_heads() -> None:
    theirs = timm_caformer(head_dim=32, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    ours = edifice.convert("timm.caformer", theirs.state_dict())
    assert ours.config.head_dim == 32
    torch.testing.assert_close(ours.eval()(images=images()), theirs(images()), atol=1e-5, rtol=1e-5)


def test_attention_heads_follow_head_dim() -> None:
    model = edifice.build("caformer", dims=(8, 16, 24, 64), depths=(1, 1, 1, 1), head_dim=8)
    heads = [m.n_heads for m in model.modules() if isinstance(m, MapAttention)]
    assert heads == [3, 8]  # width // head_dim (at least one)


def test_a_caformer_must_attend() -> None:
    with pytest.raises(ValueError, match="token_mixers"):
        edifice.config("caformer", token_mixers=("sepconv",) * 4)
    assert edifice.config("caformer").depths == (3, 3, 9, 3)  # CAFormer-S18
