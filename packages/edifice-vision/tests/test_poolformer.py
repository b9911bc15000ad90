"""``poolformer``: parity with timm's PoolFormer (V1 and V2) through the converter; the pooling mixer's equation.

The signature: timm ``MetaFormer`` models built with ``poolformer_s12``'s and ``poolformerv2_s12``'s arguments at tiny
widths, weights redrawn, converted by ``edifice.convert("timm.poolformer", ...)`` (from the model and from its state
dict), must give timm's logits, features and every feature level (fp32, 1e-5). Replacing ``Pool(X) - X`` by the
identity fails it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from timm.models import metaformer as tm
from torch import nn

import edifice
from edifice.testing import redraw_parameters, signature
from edifice_vision._metaformer import Pooling
from edifice_vision._timm_convert import assert_matches_timm

#: timm's poolformer_s12 arguments (PoolFormer V1: GroupNorm, GELU MLP with biases, LayerScale, linear head).
V1: dict[str, Any] = {
    "downsample_norm": None,
    "mlp_act": nn.GELU,
    "mlp_bias": True,
    "norm_layers": tm.GroupNorm1,
    "layer_scale_init_values": 1e-5,
    "res_scale_init_values": None,
    "use_mlp_head": False,
}
#: timm's poolformerv2_s12 arguments (StarReLU, bias-free GroupNorm, ResScale in stages 3-4, norms before downsampling).
V2: dict[str, Any] = {"norm_layers": tm.GroupNorm1NoBias, "use_mlp_head": False}


def timm_poolformer(version: dict[str, Any], **kwargs: Any) -> tm.MetaFormer:
    torch.manual_seed(0)
    model = tm.MetaFormer(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), num_classes=5, **version, **kwargs).eval()
    return redraw_parameters(model, seed=1)  # type: ignore[return-value]


def images(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("poolformer")
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_converted_timm_poolformer_matches_timm(version: str) -> None:
    theirs = timm_poolformer(V1 if version == "v1" else V2)
    ours = edifice.convert("timm.poolformer", theirs)
    c = ours.config
    assert (c.norm, c.activation, c.layer_scale is not None) == (
        ("groupnorm", "gelu", True) if version == "v1" else ("groupnorm", "starrelu", False)
    )
    for h, w in [(32, 32), (40, 56)]:
        assert_matches_timm(ours, theirs, images(h, w, seed=h))
    from_sd = edifice.convert("timm.poolformer", theirs.state_dict())  # GroupNorm and eps read as PoolFormer's
    torch.testing.assert_close(from_sd.eval()(images=images()), theirs(images()), atol=1e-5, rtol=1e-5)


@signature("poolformer")
def test_without_pooling_parity_fails() -> None:
    theirs = timm_poolformer(V1)
    ours = edifice.convert("timm.poolformer", theirs)
    for m in ours.modules():
        if isinstance(m, Pooling):
            m.forward = lambda x: x  # type: ignore[method-assign]
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def test_pooling_mixes_only_differences_from_the_neighbourhood_mean() -> None:
    # eq. (4): Pool(X) - X is zero on a constant map (padding excluded from the average, so at the borders too) and
    # equals the k x k mean minus the centre inside.
    mixer = Pooling(3)
    torch.testing.assert_close(mixer(torch.full((1, 5, 5, 2), 0.7)), torch.zeros(1, 5, 5, 2))
    x = torch.randn(1, 5, 5, 2)
    centre = x[0, 1:4, 1:4].mean((0, 1)) - x[0, 2, 2]
    torch.testing.assert_close(mixer(x)[0, 2, 2], centre)


def test_pool_size_is_read_off_a_timm_model() -> None:
    theirs = timm_poolformer(V1, pool_size=5)
    ours = edifice.convert("timm.poolformer", theirs)
    assert ours.config.pool_size == 5
    assert_matches_timm(ours, theirs, images())


def test_a_poolformer_must_pool() -> None:
    with pytest.raises(ValueError, match="token_mixers"):
        edifice.config("poolformer", token_mixers=("sepconv",) * 4)
    assert edifice.config("poolformer").layer_scale == 1e-5  # PoolFormer-S12
