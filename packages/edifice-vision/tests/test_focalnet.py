"""``focalnet``: parity with timm's FocalNet through the converter; focal modulation against its equations.

The signature: timm FocalNets at tiny widths -- the small-receptive-field model (``focalnet_tiny_srf``'s class) and the
large models' options (post-norm, overlapping downsampling, LayerScale, normalised modulator, norm in the
modulation) -- with every parameter redrawn are converted by ``edifice.convert`` and must give timm's logits,
features, every stage's map and ``forward_intermediates``' options (fp32, 1e-5). An fp64 oracle written from eqs.
(4)-(7) checks the modulation alone; without the gates, the global level or the modulator ``h``, parity fails.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.errors import CheckpointError
from edifice.testing import redraw_parameters, signature
from edifice_vision._hierarchical import assert_intermediates_match_timm
from edifice_vision._timm_convert import assert_matches_timm
from edifice_vision.configs.focalnet import FocalNetConfig
from edifice_vision.focalnet import FocalModulation

timm = pytest.importorskip("timm")

TIMM_TINY: dict[str, Any] = {"embed_dim": 8, "depths": (1, 2, 1), "focal_levels": (2, 2, 3), "focal_windows": (3, 3, 3)}
LARGE: dict[str, Any] = {
    "focal_windows": (5, 3, 3),
    "use_post_norm": True,
    "use_overlap_down": True,
    "layerscale_value": 1e-4,
    "use_post_norm_in_modulation": True,
    "normalize_modulator": True,
}


def timm_focalnet(seed: int = 1, **kwargs: Any) -> Any:
    from timm.models.focalnet import FocalNet as TimmFocalNet  # focalnet_tiny_srf's class (its factory fixes sizes)

    torch.manual_seed(0)
    model = TimmFocalNet(num_classes=7, **{**TIMM_TINY, **kwargs})
    return redraw_parameters(model, seed=seed).eval()


def images(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("focalnet")
@pytest.mark.parametrize("kwargs", [{}, LARGE], ids=["srf", "large-options"])
def test_converted_timm_focalnet_matches_timm(kwargs: dict[str, Any]) -> None:
    theirs = timm_focalnet(**kwargs)
    ours = edifice.convert("timm.focalnet", theirs)
    assert ours.config.focal_levels == (2, 2, 3) and ours.config.post_norm == bool(kwargs)
    for h, w in [(32, 32), (40, 56)]:
        assert_matches_timm(ours, theirs, images(h, w, seed=h))
    assert_intermediates_match_timm(ours, theirs, images(48, 32))


@pytest.mark.parametrize("broken", ["gates", "global", "modulator"])
def test_without_its_mechanism_parity_fails(broken: str) -> None:
    theirs = timm_focalnet()
    ours = edifice.convert("timm.focalnet", theirs)
    for m in ours.modules():
        if isinstance(m, FocalModulation):
            with torch.no_grad():
                if broken == "gates":  # equal weights: a plain sum of the levels
                    m.f.weight[-(m.level + 1) :] = 0
                    m.f.bias[-(m.level + 1) :] = 1
                elif broken == "global":  # no Z^{L+1}: drop the global level's gate
                    m.f.weight[-1] = 0
                    m.f.bias[-1] = 0
                else:  # q ⊙ Z^out without h
                    m.h = torch.nn.Identity()
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def modulation_oracle(m: FocalModulation, x: torch.Tensor) -> torch.Tensor:
    """Eqs. (4)-(7) in fp64, one level at a time, with the 1x1 layers written as channel contractions."""
    C, L = x.shape[1], m.level

    def linear(conv: torch.nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], t) + conv.bias[None, :, None, None]

    projected = linear(m.f, x)
    q, z, gates = projected[:, :C], projected[:, C : 2 * C], projected[:, 2 * C :]
    levels = []
    for conv in m.focal_layers:  # eq. (4): Z^l = GeLU(DWConv(Z^{l-1}))
        k = conv.kernel_size[0]
        z = F.gelu(F.conv2d(z, conv.weight, padding=k // 2, groups=C))
        levels.append(z)
    levels.append(F.gelu(z.mean((2, 3), keepdim=True)).expand_as(z))  # Z^{L+1} = GeLU(AvgPool(Z^L))
    z_out = sum(gates[:, lvl : lvl + 1] * levels[lvl] for lvl in range(L + 1))  # eq. (5)
    y = q * linear(m.h, z_out)  # eqs. (6)-(7): q(x) ⊙ h(Z^out)
    return linear(m.proj, y)


def test_focal_modulation_is_the_papers_equations() -> None:
    torch.manual_seed(0)
    config = FocalNetConfig(d_model=6, focal_levels=(3,), focal_windows=(3,), depths=(1,))
    m = redraw_parameters(FocalModulation(config, 6, 3, 3), seed=2).double()
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), modulation_oracle(m, x))
    assert [c.kernel_size[0] for c in m.focal_layers] == [3, 5, 7]  # k_l = k + 2(l - 1): growing receptive fields


def test_converter_takes_a_state_dict_and_names_what_it_cannot_map() -> None:
    theirs = timm_focalnet(**LARGE)
    state = theirs.state_dict()
    ours = edifice.convert("timm.focalnet", state, normalize_modulator=True)
    torch.testing.assert_close(ours.eval()(images=images()), theirs(images()), atol=1e-5, rtol=1e-5)
    assert ours.config.overlap_down and ours.config.patch_size == 4 and ours.config.layer_scale is not None
    with pytest.raises(CheckpointError, match="head_hidden_size"):
        edifice.convert("timm.focalnet", timm_focalnet(head_hidden_size=12))
    with pytest.raises(CheckpointError, match=r"stem\.proj\.weight"):
        edifice.convert("timm.focalnet", {"head.fc.weight": torch.zeros(2, 2)})


def test_intermediates_follow_feature_info() -> None:
    model = edifice.build("focalnet", **edifice.registry.get_spec("focalnet").tiny).eval()
    x = images(18, 26)
    final, maps = model.forward_intermediates(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 9, 13), (16, 4, 6)]
    assert [(f.num_chs, f.reduction) for f in model.feature_info] == [(8, 2), (16, 4)]
    torch.testing.assert_close(model(images=x), model.forward_head(final))


def test_initialisation_is_the_authors() -> None:
    model = edifice.build("focalnet", d_model=64, depths=(1,), focal_levels=(2,), focal_windows=(3,), layer_scale=0.1)
    block = model.stages[0].blocks[0]  # type: ignore[index]
    assert block.modulation.f.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert block.modulation.f.bias.abs().sum().item() == 0
    assert torch.all(block.ls1.gamma == 0.1) and torch.all(block.ls2.gamma == 0.1)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"focal_levels": (2,)}, "focal_levels"),
        ({"focal_windows": (4, 3, 3, 3)}, "focal_windows"),
        ({"focal_factor": 3}, "focal_factor"),
        ({"overlap_down": True, "patch_size": 8}, "patch_size"),
        ({"layer_scale": -1.0}, "layer_scale"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        edifice.config("focalnet", **overrides)


@pytest.mark.slow
def test_full_size_focalnet_tiny_matches_timm() -> None:
    # The real FocalNet-T (SRF, 28M parameters) end to end, as a user's ImageNet checkpoint would load.
    torch.manual_seed(0)
    theirs = timm.create_model("focalnet_tiny_srf").eval()
    ours = edifice.convert("timm.focalnet", theirs)
    assert ours.config == edifice.config("focalnet", num_classes=1000)
    assert_matches_timm(ours, theirs, images(224, 224)[:1], atol=1e-4)
