"""``unet``: the U-Net (Ronneberger et al. 2015) as DDPM's time- and class-conditioned denoiser (Ho et al. 2020).

The signature is a pair of properties only the U-Net's wiring has. Skip connections: every decoder residual block
receives, concatenated, exactly the encoder feature map of its resolution, and with the bottleneck cut (the middle
block's output replaced by zeros) the output still follows the input, which no plain encoder-decoder can do. Time
conditioning: the sinusoidal embedding is DDPM's formula (fp64), and every residual block receives the embedding and
changes when only the time changes.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import edifice
from edifice.blocks.positional import timestep_features
from edifice.testing import redraw_parameters, signature
from edifice_vision.unet import AttentionBlock, ResBlock, UNet2D

TINY: dict[str, Any] = {
    "in_channels": 2,
    "base_features": 8,
    "channel_mults": (1, 2),
    "layers_per_block": 1,
    "norm_groups": 4,
    "dropout": 0.0,
    "num_classes": 3,
    "image_size": 16,
    "use_attention": False,  # attention is not the mechanism under test here (see test_attention_block_is_softmax)
}


def build(dtype: torch.dtype = torch.float64, **overrides: Any) -> Any:
    torch.manual_seed(0)
    model = edifice.build("unet", dtype=dtype, **{**TINY, **overrides}).eval()
    return redraw_parameters(model, seed=1)  # off the zero initialisation, so every path carries signal


def inputs(B: int = 2, H: int = 16, W: int = 16, seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(B, 2, H, W, generator=g, dtype=torch.float64),
        "timestep": torch.rand(B, generator=g, dtype=torch.float64) * 1000,
        "class_labels": torch.randint(0, 3, (B,), generator=g),
    }


@signature("unet")
def test_skips_carry_encoder_features_past_a_cut_bottleneck() -> None:
    model = build()
    net = model.unet
    encoder = [m for level in net.down for m in level.res]
    decoder = [m for level in net.up for m in level.res]
    seen: dict[str, list[torch.Tensor]] = {"enc": [], "dec": []}
    hooks = [m.register_forward_hook(lambda _m, _a, out: seen["enc"].append(out)) for m in encoder]
    hooks += [m.register_forward_pre_hook(lambda _m, args: seen["dec"].append(args[0])) for m in decoder]
    with torch.no_grad():
        model(**inputs())
    for h in hooks:
        h.remove()
    # Decoder block j concatenates [h, skip]; with one encoder block per level (two decoder blocks) the skips are,
    # last first: encoder level-1 output, the downsampled level-0 output, level-0 output, the stem (conv_in).
    dec = seen["dec"]
    lvl1_skip = dec[0][:, -encoder[1].conv2.out_channels :]
    torch.testing.assert_close(lvl1_skip, seen["enc"][1], atol=0, rtol=0)
    lvl0_skip = dec[2][:, -encoder[0].conv2.out_channels :]
    torch.testing.assert_close(lvl0_skip, seen["enc"][0], atol=0, rtol=0)

    cut = net.mid.register_forward_hook(lambda _m, _a, out: torch.zeros_like(out))
    with torch.no_grad():
        a = model(**inputs(seed=2))
        b = model(**{**inputs(seed=2), "x": inputs(seed=3)["x"]})
    cut.remove()
    assert (a - b).abs().amax() > 1e-3  # the input still reaches the output, around the bottleneck


@signature("unet")
def test_time_embedding_enters_every_residual_block() -> None:
    model = build()
    t = torch.tensor([0.0, 1.0, 37.5, 999.0], dtype=torch.float64)
    d = 8
    emb = timestep_features(t, d, flip_sin_to_cos=False, downscale_freq_shift=1.0)  # what UNet2D.time_embed uses
    want = torch.empty(4, d, dtype=torch.float64)
    for i in range(d // 2):  # DDPM's get_timestep_embedding
        w = math.exp(-math.log(10000.0) * i / (d // 2 - 1))
        want[:, i] = torch.sin(t * w)
        want[:, d // 2 + i] = torch.cos(t * w)
    torch.testing.assert_close(emb.double(), want, atol=1e-4, rtol=0)  # core computes the angles in fp32
    te = model.unet.time_embed
    assert (te.frequency_dim, te.flip_sin_to_cos, te.downscale_freq_shift) == (d, False, 1.0)
    mlp = te.linear_2(torch.nn.functional.silu(te.linear_1(want)))
    torch.testing.assert_close(te(t), mlp, atol=1e-4, rtol=0)

    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 2 * 1 + 2 + 2 * 2  # encoder, middle, decoder (one more per level)
    got: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: got.append(args[1])) for m in blocks]
    x = inputs()
    with torch.no_grad():
        model(**x)
        expected = model.unet.embed(x["timestep"], x["class_labels"])
    for h in hooks:
        h.remove()
    assert len(got) == len(blocks)
    for e in got:
        torch.testing.assert_close(e, expected, atol=0, rtol=0)
    with torch.no_grad():
        e1 = model.unet.embed(torch.tensor([10.0, 10.0], dtype=torch.float64), x["class_labels"])
        e2 = model.unet.embed(torch.tensor([500.0, 500.0], dtype=torch.float64), x["class_labels"])
        for block in blocks:
            hb = torch.randn(2, block.conv1.in_channels, 8, 8, dtype=torch.float64)
            assert (block(hb, e1) - block(hb, e2)).abs().amax() > 1e-6


@pytest.mark.parametrize(("H", "W"), [(8, 8), (16, 24), (32, 8)])
def test_any_even_size(H: int, W: int) -> None:
    model = build()
    with torch.no_grad():
        y = model(**inputs(1, H, W))
    assert y.shape == (1, 2, H, W)


def test_odd_size_and_missing_labels_raise() -> None:
    model = build()
    with pytest.raises(edifice.InputError, match="multiples"):
        model(**inputs(1, 15, 16))
    with pytest.raises(edifice.InputError, match="class_labels"):
        model(**{**inputs(), "class_labels": None})


def test_class_labels_condition_the_output() -> None:
    model = build()
    x = inputs()
    with torch.no_grad():
        a = model(**x)
        b = model(**{**x, "class_labels": (x["class_labels"] + 1) % 3})
    assert (a - b).abs().amax() > 1e-6


def test_zero_initialisation_starts_at_zero() -> None:
    torch.manual_seed(0)
    model = edifice.build("unet", **{**TINY, "use_attention": True}).eval()
    x = {k: (v.float() if v.is_floating_point() else v) for k, v in inputs().items()}
    with torch.no_grad():
        assert model(**x).abs().max() == 0  # DDPM zeroes the output convolution
    for block in (m for m in model.modules() if isinstance(m, ResBlock)):
        assert block.conv2.weight.abs().max() == 0
    redraw_parameters(model, seed=3)
    model.reset_parameters()
    with torch.no_grad():
        assert model(**x).abs().max() == 0


def test_attention_block_is_softmax_over_positions() -> None:
    torch.manual_seed(0)
    block = redraw_parameters(AttentionBlock(8, heads=2, groups=4).double(), seed=1)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    h = block.norm(x)
    q, k, v = block.qkv(h).reshape(2, 3, 2, 4, 15).unbind(1)  # (B, heads, d, HW)
    attn = torch.softmax(q.transpose(-1, -2) @ k / 2.0, dim=-1)  # sqrt(d) = 2
    o = (attn @ v.transpose(-1, -2)).transpose(-1, -2).reshape(2, 8, 3, 5)
    torch.testing.assert_close(block(x), x + block.proj(o), atol=1e-12, rtol=0)


def test_registered_as_a_block() -> None:
    cls = edifice.blocks.get("unet")
    assert cls is UNet2D
    model = build()
    body = cls(2, base_features=8, channel_mults=(1, 2), layers_per_block=1, attention_levels=(), norm_groups=4,
               dropout=0.0, num_classes=3).double()  # fmt: skip
    body.load_state_dict(model.unet.state_dict())
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(body(x["x"], x["timestep"], x["class_labels"]), model(**x))


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="norm_groups"):
        edifice.config("unet", base_features=8, norm_groups=3)
    with pytest.raises(ValueError, match="attention_levels"):
        edifice.config("unet", attention_levels=(7,))
    with pytest.raises(ValueError, match="image_size"):
        edifice.config("unet", image_size=20)


@pytest.mark.slow
def test_learns_a_tiny_batch() -> None:
    """DESIGN §8's learning check: 200 Adam steps cut the loss on one tiny batch by >= 80%."""
    torch.manual_seed(0)
    model = edifice.build("unet", **{**TINY, "use_attention": True})
    x = {k: (v.float() if v.is_floating_point() else v) for k, v in inputs().items()}
    target = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = ((model(**x) - target) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0]
