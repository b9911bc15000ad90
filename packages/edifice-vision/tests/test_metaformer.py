"""``metaformer``: parity with timm's MetaFormer through the converter, for every token mixer timm can hold.

The signature: timm ``MetaFormer`` models at tiny widths -- ConvFormer (separable convolutions), IdentityFormer and a
model with a different mixer in each stage (identity, pooling, separable conv, attention) -- with redrawn weights are
converted by ``edifice.convert("timm.metaformer", ...)`` and must give timm's logits, pooled features, unpooled
features and every feature level at several image sizes (fp32, 1e-5). Replacing the separable-convolution mixer by
the identity fails it. RandFormer's frozen random mixing (no timm model) is checked against its equation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from timm.models import metaformer as tm

import edifice
from edifice.testing import redraw_parameters, signature
from edifice_vision._metaformer import RandomMixing, SepConv
from edifice_vision._timm_convert import assert_matches_timm

TINY = {
    "image_size": 16,
    "patch_size": 2,
    "depths": (1, 1, 1, 1),
    "dims": (8, 16, 24, 24),
    "token_mixers": ("identity", "pooling", "sepconv", "attention"),
    "head_dim": 8,
    "num_classes": 10,
}
#: timm's convformer_s18 arguments (MetaFormer Baselines' ConvFormer).
CONVFORMER = {"token_mixers": tm.SepConv, "norm_layers": tm.LayerNorm2dNoBias}


def timm_metaformer(seed: int = 1, **kwargs: Any) -> tm.MetaFormer:
    torch.manual_seed(0)
    model = tm.MetaFormer(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), num_classes=5, **kwargs).eval()
    return redraw_parameters(model, seed=seed)  # type: ignore[return-value]


def images(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("metaformer")
@pytest.mark.parametrize(
    ("kwargs", "mixers"),
    [
        (CONVFORMER, ("sepconv",) * 4),
        ({"token_mixers": torch.nn.Identity, "use_mlp_head": False}, ("identity",) * 4),
        (
            {
                "token_mixers": [torch.nn.Identity, tm.Pooling, tm.SepConv, tm.Attention],
                "norm_layers": [tm.LayerNorm2dNoBias] * 3 + [tm.LayerNormNoBias],  # attention stages run on tokens
                "head_dim": 8,
            },
            ("identity", "pooling", "sepconv", "attention"),
        ),
    ],
    ids=["convformer", "identityformer", "one-of-each"],
)
def test_converted_timm_metaformer_matches_timm(kwargs: dict[str, Any], mixers: tuple[str, ...]) -> None:
    theirs = timm_metaformer(**kwargs)
    ours = edifice.convert("timm.metaformer", theirs)
    assert ours.config.token_mixers == mixers and ours.config.depths == (1, 2, 1, 1)
    for h, w in [(32, 32), (40, 56)]:
        assert_matches_timm(ours, theirs, images(h, w, seed=h))


@signature("metaformer")
def test_without_the_separable_convolution_parity_fails() -> None:
    theirs = timm_metaformer(**CONVFORMER)
    ours = edifice.convert("timm.metaformer", theirs)
    for m in ours.modules():
        if isinstance(m, SepConv):
            m.forward = lambda x: x  # type: ignore[method-assign]
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def test_random_mixing_is_a_frozen_row_stochastic_matrix_over_the_stage_tokens(tmp_path: Path) -> None:
    # RandFormer (Baselines eq. 4): X W_R with W_R = softmax(U), U ~ U(0,1), never trained.
    model = edifice.build("metaformer", **{**TINY, "token_mixers": ("random",) * 4}).eval()
    mixers = [m for m in model.modules() if isinstance(m, RandomMixing)]
    assert [m.side for m in mixers] == [8, 4, 2, 2]
    assert not any("matrix" in name for name, _ in model.named_parameters())  # a buffer: saved, not trained
    mixer = mixers[1]
    torch.testing.assert_close(mixer.matrix.sum(-1), torch.ones(16))
    assert float(mixer.matrix.min()) > 0
    x = torch.randn(2, 4, 4, 16)
    expected = torch.einsum("mn,bnc->bmc", mixer.matrix, x.reshape(2, 16, 16)).reshape(2, 4, 4, 16)
    torch.testing.assert_close(mixer(x), expected)
    assert model(images=images(16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match="fixed to a 8x8 map"):
        model(images=images(32, 32))
    edifice.save(model, tmp_path / "randformer.safetensors")  # W_R is saved with the weights
    loaded = edifice.load(tmp_path / "randformer.safetensors").eval()
    torch.testing.assert_close(loaded(images=images(16, 16)), model(images=images(16, 16)))


def test_a_stage_as_wide_as_the_last_keeps_its_resolution() -> None:
    # The authors' code (and timm's) downsample only when the width changes.
    model = edifice.build("metaformer", **TINY).eval()
    assert [(f.num_chs, f.reduction) for f in model.feature_info] == [(8, 2), (16, 4), (24, 8), (24, 8)]
    for size in (16, 24):
        final, maps = model.forward_intermediates(images(size, size))
        assert [m.shape[-1] for m in maps] == [-(-size // f.reduction) for f in model.feature_info]
        torch.testing.assert_close(final, model.forward_features(images(size, size)))


def test_state_dict_conversion_and_mlp_head_reset() -> None:
    theirs = timm_metaformer(**CONVFORMER)
    from_sd = edifice.convert("timm.metaformer", theirs.state_dict(), drop_path_rate=0.1)
    assert from_sd.config.drop_path_rate == 0.1 and from_sd.config.head == "mlp"
    torch.testing.assert_close(from_sd.eval()(images=images()), theirs(images()), atol=1e-5, rtol=1e-5)
    from_sd.reset_classifier(3)
    assert type(from_sd.head).__name__ == "MlpHead" and from_sd(images=images()).shape == (2, 3)
    from_sd.reset_classifier(0)
    assert from_sd(images=images()).shape == (2, 32)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = edifice.build("metaformer", **TINY).train()
    redraw_parameters(model, seed=3)
    x = images(16, 16)
    model(images=x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(images=x).square().sum().backward()
    for a, b in zip(plain, [p.grad for p in model.parameters() if p.grad is not None], strict=True):
        torch.testing.assert_close(a, b)


def test_init_is_the_released_codes_truncated_normal() -> None:
    model = edifice.build("metaformer", dims=(64,), depths=(1,), token_mixers=("sepconv",), num_classes=0)
    w = model.stages[0].blocks[0].mlp.up_proj.weight.detach()  # type: ignore[index,union-attr]
    assert float(w.std()) == pytest.approx(0.02, rel=0.05) and float(w.abs().max()) <= 2.0
    act = model.stages[0].blocks[0].mlp.act  # type: ignore[index,union-attr]
    assert (act.scale.item(), act.bias.item()) == (1.0, 0.0)  # StarReLU starts as squared ReLU


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"token_mixers": ("sepconv",) * 3}, "token_mixers"),
        ({"token_mixers": ("sepconv", "mamba", "sepconv", "sepconv")}, "mamba"),
        ({"dims": (8, 16)}, "dims"),
        ({"pool_size": 4}, "pool_size"),
        ({"norm": "batchnorm"}, "norm"),
        ({"activation": "swishy"}, "activation"),
        ({"head": "conv"}, "head"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        edifice.config("metaformer", **overrides)
