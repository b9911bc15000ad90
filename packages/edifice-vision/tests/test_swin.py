"""``swin``: parity with timm's SwinTransformer through the converter; the shifted-window mask and bias; any image size.

The signature: timm Swin Transformers at tiny widths (several stages, windows that shift, a last stage whose grid is
no larger than a window) with every parameter redrawn -- the relative position bias tables included -- are converted
by ``edifice.convert`` and must give timm's logits, features, every stage's map and ``forward_intermediates``' options
(fp32, 1e-5), at the training size and, against timm's ``dynamic_img_size``, at sizes the windows do not divide
(padding). Without the cyclic shift, the sub-window mask or the bias -- or with ``edifice.ops.sdpa`` mutated to
ignore its mask -- parity fails.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.errors import CheckpointError
from edifice.testing import redraw_parameters, signature
from edifice_vision._hierarchical import assert_intermediates_match_timm
from edifice_vision._timm_convert import assert_matches_timm
from edifice_vision.swin import relative_position_index, shift_mask, window_partition

timm = pytest.importorskip("timm")

#: grid 16 -> 8 -> 4 with M = 4: stages 0-1 shift by 2, stage 2 is one window without shift.
TIMM_TINY: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 2,
    "embed_dim": 8,
    "depths": (2, 2, 1),
    "num_heads": (2, 2, 4),
    "window_size": 4,
}


SHRUNK: dict[str, Any] = {"img_size": 16, "window_size": 6, "depths": (2, 2), "num_heads": (2, 2)}


def timm_swin(seed: int = 1, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=7, **{**TIMM_TINY, **kwargs})
    return redraw_parameters(model, seed=seed).eval()


def images(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@signature("swin")
def test_converted_timm_swin_matches_timm() -> None:
    theirs = timm_swin()
    ours = edifice.convert("timm.swin", theirs)
    assert (ours.config.image_size, ours.config.window_size, ours.config.n_heads) == (32, 4, (2, 2, 4))
    assert [(b.window, b.shift) for s in ours.stages for b in s.blocks] == [(4, 0), (4, 2)] * 2 + [(4, 0)]  # type: ignore[union-attr]
    assert_matches_timm(ours, theirs, images())
    assert_intermediates_match_timm(ours, theirs, images(seed=1))


@signature("swin")
@pytest.mark.parametrize("size", [(40, 24), (34, 18)], ids=["windows-pad", "odd-merges"])
def test_matches_timm_at_sizes_the_windows_do_not_divide(size: tuple[int, int]) -> None:
    theirs = timm_swin(dynamic_img_size=True)  # timm builds the shift masks of the padded map at each forward
    ours = edifice.convert("timm.swin", theirs)
    assert_matches_timm(ours, theirs, images(*size))


@signature("swin")
def test_window_larger_than_the_grid_shrinks_to_it_as_in_timm() -> None:
    # grid 8 -> 4 with M = 6: stage 0 pads 8 to 12 and shifts by 3; stage 1 is one 4x4 window without shift
    theirs = timm_swin(**SHRUNK, qkv_bias=False, mlp_ratio=2.0)
    ours = edifice.convert("timm.swin", theirs)
    assert [(b.window, b.shift) for s in ours.stages for b in s.blocks] == [(6, 0), (6, 3), (4, 0), (4, 0)]  # type: ignore[union-attr]
    assert not ours.config.qkv_bias and ours.config.mlp_ratio == 2.0
    assert_matches_timm(ours, theirs, images(16, 16))


@pytest.mark.parametrize("broken", ["shift", "mask", "bias"])
def test_without_its_mechanism_parity_fails(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = timm_swin()
    ours = edifice.convert("timm.swin", theirs)
    if broken == "shift":  # W-MSA everywhere: no connections across windows
        for stage in ours.stages:
            for block in stage.blocks:  # type: ignore[union-attr]
                block.shift = 0
    elif broken == "mask":  # shift without the sub-window mask: wrapped tokens attend as if neighbours
        monkeypatch.setattr(
            "edifice_vision.swin.shift_mask", lambda h, w, m, s, device=None: torch.zeros(1, m * m, m * m)
        )
    else:
        for stage in ours.stages:
            for block in stage.blocks:  # type: ignore[union-attr]
                block.attn.relative_position_bias_table.data.zero_()
    with pytest.raises(AssertionError):
        assert_matches_timm(ours, theirs, images())


def test_shift_mask_keeps_each_token_in_its_sub_window() -> None:
    # §3.2 oracle: after rolling by -s, a token at (y, x) of the (H, W) map came from its own border region; two
    # tokens of one window may attend iff they lie in the same row band and the same column band.
    H, W, M, s = 8, 12, 4, 2
    mask = shift_mask(H, W, M, s)
    assert mask.shape == ((H // M) * (W // M), M * M, M * M)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    band = ((ys >= H - M).long() + (ys >= H - s).long()) * 3 + (xs >= W - M).long() + (xs >= W - s).long()
    labels = window_partition(band[None, :, :, None], M)[..., 0]
    for w in range(mask.shape[0]):
        for i in range(M * M):
            for j in range(M * M):
                same = bool(labels[w, i] == labels[w, j])
                assert mask[w, i, j].item() == (0.0 if same else float("-inf"))
    assert (mask[0] == 0).all()  # an interior window is whole
    assert (mask[-1] == float("-inf")).sum() > 0  # the corner window mixes four regions


def test_relative_position_index_reads_the_offset() -> None:
    M = 3
    index = relative_position_index(M)
    coords = [(y, x) for y in range(M) for x in range(M)]
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            assert index[i, j].item() == (yi - yj + M - 1) * (2 * M - 1) + (xi - xj + M - 1)


def test_converter_reads_state_dicts_and_the_authors_layout() -> None:
    theirs = timm_swin()
    state = theirs.state_dict()
    ours = edifice.convert("timm.swin", state, image_size=32)
    torch.testing.assert_close(ours.eval()(images=images()), theirs(images()), atol=1e-5, rtol=1e-5)
    # the authors' checkpoints: patch merging at the end of the stage before, head without ".fc"
    authors = {}
    for key, value in state.items():
        stage = key.split(".")[1] if key.startswith("layers.") else None
        if stage is not None and ".downsample." in key:
            key = key.replace(f"layers.{stage}.", f"layers.{int(stage) - 1}.", 1)
        authors[key.replace("head.fc.", "head.")] = value
    authors["layers.0.blocks.1.attn_mask"] = torch.zeros(1)  # buffers the authors saved
    torch.testing.assert_close(
        edifice.convert("timm.swin", authors, image_size=32).eval()(images=images()),
        theirs(images()),
        atol=1e-5,
        rtol=1e-5,
    )
    shrunk = timm_swin(**SHRUNK).state_dict()
    with pytest.raises(CheckpointError, match="pass the checkpoint's image_size"):
        edifice.convert("timm.swin", shrunk)  # at 224 no window shrinks: stage 1's 7x7 table does not fit
    with pytest.raises(CheckpointError, match="relative_position_bias_table"):
        edifice.convert("timm.swin", {"patch_embed.proj.weight": torch.zeros(8, 3, 2, 2)})


def test_images_the_patch_does_not_divide_raise() -> None:
    model = edifice.build("swin", **edifice.registry.get_spec("swin").tiny)
    with pytest.raises(ValueError, match="not divisible by patch_size=2"):
        model(images=torch.randn(1, 3, 16, 15))


def test_intermediates_are_nchw_maps_at_any_size() -> None:
    model = edifice.build("swin", **edifice.registry.get_spec("swin").tiny).eval()
    x = images(22, 14)
    final, maps = model.forward_intermediates(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 11, 7), (16, 6, 4)]
    assert final.shape == (2, 6, 4, 16)  # forward_features is channels-last, as timm's
    assert [(f.num_chs, f.reduction) for f in model.feature_info] == [(8, 2), (16, 4)]
    torch.testing.assert_close(model(images=x), model.forward_head(final))
    model.reset_classifier(0, global_pool="max")
    torch.testing.assert_close(model(images=x), final.amax((1, 2)))


def test_initialisation_is_the_authors() -> None:
    model = edifice.build("swin", d_model=64, depths=(1,), n_heads=(2,), num_classes=0)
    attn = model.stages[0].blocks[0].attn  # type: ignore[index]
    table = attn.relative_position_bias_table
    assert table.shape == (13 * 13, 2) and table.std().item() == pytest.approx(0.02, rel=0.15)
    assert attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1) and attn.q_proj.bias.abs().sum().item() == 0


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"n_heads": (2,)}, "n_heads"),
        ({"d_model": 6, "n_heads": (4, 4)}, "n_heads"),
        ({"image_size": 17}, "image_size"),
        ({"window_size": 0}, "window_size"),
        ({"attn_drop_rate": 1.0}, "attn_drop_rate"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], words: str) -> None:
    base = {"depths": (2, 2), "n_heads": (2, 4), "d_model": 8}
    with pytest.raises(ValueError, match=words):
        edifice.config("swin", **{**base, **overrides})


@pytest.mark.slow
def test_full_size_swin_tiny_matches_timm() -> None:
    # The real Swin-T (28M parameters) end to end, as a user's ImageNet checkpoint would load.
    torch.manual_seed(0)
    theirs = timm.create_model("swin_tiny_patch4_window7_224").eval()
    ours = edifice.convert("timm.swin", theirs)
    assert ours.config == edifice.config("swin", num_classes=1000)
    assert_matches_timm(ours, theirs, images(224, 224)[:1], atol=1e-4)
