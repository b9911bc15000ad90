"""``vision_kan``: the KAN layer against an fp64 oracle of its equations, the ViK token mixer against its steps.

The signature is the oracle: Cox-de Boor B-splines on the extended grid and the KAN layer's output
``y_j = b_j + Σ_i w_b silu(x_i) + w_s Σ_k c_k B_k(x_i)`` (Liu et al. 2024, eq. 2.10-2.12) written with Python floats,
and MultiPatch-KAN (windowed KAN, axis-wise mixing, low-rank global map) recomputed window by window in fp64. A plain
MLP in place of the spline term fails both.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import signature
from edifice_vision._kan import KANLayer, bspline_basis, extended_grid

TOL = 1e-12


def cox_de_boor(j: int, p: int, x: float, t: list[float]) -> float:
    """The order-``p`` B-spline ``B_{j,p}(x)`` on knots ``t`` by the recursion, in Python floats."""
    if p == 0:
        return 1.0 if t[j] <= x < t[j + 1] else 0.0
    left = (x - t[j]) / (t[j + p] - t[j]) * cox_de_boor(j, p - 1, x, t)
    right = (t[j + p + 1] - x) / (t[j + p + 1] - t[j + 1]) * cox_de_boor(j + 1, p - 1, x, t)
    return left + right


def silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def edge_basis(layer: KANLayer, i: int, x: float) -> list[float]:
    """The basis functions of input ``i`` at ``x``, from the layer's grid settings (B-splines) or its RBF parameters."""
    if layer.basis == "bspline":
        low, high = layer.grid_range
        G, k = layer.grid_size, layer.spline_order
        h = (high - low) / G
        t = [low + h * (m - k) for m in range(G + 2 * k + 1)]
        return [cox_de_boor(j, k, x, t) for j in range(G + k)]
    mu, sigma = layer.centers[i].tolist(), layer.log_widths[i].exp().tolist()
    return [math.exp(-0.5 * ((x - m) / s) ** 2) for m, s in zip(mu, sigma, strict=True)]


def kan_oracle(layer: KANLayer, x: list[float]) -> list[float]:
    """``y_j = b_j + Σ_i [w_b[j,i] silu(x_i) + w_s[j,i] Σ_k c[j,i,k] B_k(x_i)]`` in Python floats."""
    wb, ws, c = layer.base_weight.tolist(), layer.spline_scale.tolist(), layer.spline_weight.tolist()
    bias = layer.bias.tolist() if layer.bias is not None else [0.0] * layer.out_features
    out = []
    for j in range(layer.out_features):
        total = bias[j]
        for i, xi in enumerate(x):
            spline = sum(ck * bk for ck, bk in zip(c[j][i], edge_basis(layer, i, xi), strict=True))
            total += wb[j][i] * silu(xi) + ws[j][i] * spline
        out.append(total)
    return out


def redraw(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter ~ N(0, 0.5²) (RBF widths kept positive via their log), fp64."""
    gen = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module


@signature("vision_kan")
@pytest.mark.parametrize("order", [0, 1, 3])
def test_bspline_basis_is_the_cox_de_boor_recursion(order: int) -> None:
    grid_range, G = (-2.0, 2.0), 4
    knots = extended_grid(G, order, grid_range)
    t = knots.tolist()
    assert len(t) == G + 2 * order + 1 and t[order] == -2.0 and t[G + order] == 2.0
    x = torch.cat([torch.linspace(-3.5, 3.5, 57, dtype=torch.float64), knots])  # outside, inside, on the knots
    got = bspline_basis(x, knots, order)
    want = torch.tensor(
        [[cox_de_boor(j, order, v, t) for j in range(G + order)] for v in x.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    inside = (x >= -2.0) & (x < 2.0)
    torch.testing.assert_close(got[inside].sum(-1), torch.ones(int(inside.sum()), dtype=torch.float64))  # unity


@signature("vision_kan")
@pytest.mark.parametrize("basis", ["bspline", "rbf"])
def test_kan_layer_matches_its_equations_in_fp64(basis: str) -> None:
    torch.manual_seed(0)
    layer = redraw(KANLayer(3, 2, grid_size=5, spline_order=3, grid_range=(-1.5, 1.5), basis=basis))
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.2
    got = layer(x)
    want = torch.tensor([kan_oracle(layer, row) for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    # the spline term carries weight: dropping it (silu + linear only, an MLP edge) misses the oracle by far
    with torch.no_grad():
        mlp_only = F.linear(F.silu(x), layer.base_weight, layer.bias)
    assert (mlp_only - want).abs().max() > 1e-2


def mixer_oracle(mixer: Any, x: torch.Tensor) -> torch.Tensor:
    """MultiPatch-KAN on ``[B, H, W, C]`` window by window (Python-float KAN), then its two mixing steps, fp64."""
    B, H, W, C = x.shape
    ps = mixer.window
    z = x.permute(0, 3, 1, 2).clone()  # (B, C, H, W)
    for b in range(B):
        for c in range(C):
            for r in range(0, H, ps):
                for q in range(0, W, ps):
                    window = z[b, c, r : r + ps, q : q + ps]
                    pixels = window.reshape(-1).tolist()  # row-major within the window
                    out = kan_oracle(mixer.kan, pixels)
                    window += torch.tensor(out, dtype=torch.float64).reshape(ps, ps)
    pooled = z.mean((2, 3), keepdim=True)
    first, _, second, _ = mixer.reweight[1], None, mixer.reweight[3], None
    a = torch.softmax(F.conv2d(F.gelu(F.conv2d(pooled, first.weight, first.bias)), second.weight, second.bias), 1)
    k = mixer.conv_h.weight.shape[2]
    z_h = F.conv2d(z, mixer.conv_h.weight, mixer.conv_h.bias, padding=(k // 2, 0), groups=C)
    z_w = F.conv2d(z, mixer.conv_w.weight, mixer.conv_w.bias, padding=(0, k // 2), groups=C)
    z = a[:, :1] * z_h + a[:, 1:] * z_w
    flat = z.reshape(B, C, H * W)
    z = z + (flat @ mixer.global_down.weight.t() @ mixer.global_up.weight.t()).reshape(B, C, H, W)
    return z.permute(0, 2, 3, 1)


@signature("vision_kan")
@pytest.mark.parametrize("basis", ["bspline", "rbf"])
def test_token_mixer_is_a_windowed_kan_then_axis_and_global_mixing(basis: str) -> None:
    model = tiny(basis=basis)
    mixer = redraw(model.stages[1].blocks[0].token_mixer)  # 4x4 map of 16 channels, 2x2 windows
    x = torch.randn(2, 4, 4, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), mixer_oracle(mixer, x), atol=1e-10, rtol=0)


def tiny(**overrides: Any) -> Any:
    from edifice_vision.configs.vision_kan import TINY

    torch.manual_seed(0)
    return edifice.build("vision_kan", **{**TINY, **overrides}).eval()


def test_image_size_is_fixed_and_named() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"vision_kan: image size 32x32.*sized for 16x16 images"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="kan_patch_size"):
        edifice.config("vision_kan", image_size=16, patch_size=2, channels=(8, 16), depths=(1, 1), kan_patch_size=3)


def test_backbone_api_feature_maps_and_pooling() -> None:
    model = tiny()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [(2, 8, 8, 8), (2, 16, 4, 4)]
        assert [(f.num_chs, f.reduction) for f in model.feature_info] == [(8, 2), (16, 4)]
        torch.testing.assert_close(final, model.forward_features(x))
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), final.mean((2, 3)))
    assert len(model.kan_layers()) == 2


def test_every_parameter_learns() -> None:
    model = tiny(layer_scale=1.0).train()
    grads = torch.autograd.grad(model(torch.randn(2, 3, 16, 16)).square().sum(), list(model.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("basis", "chebyshev", "basis"),
        ("depths", (1,), "depths"),
        ("grid_range", (1.0, -1.0), "grid_range"),
        ("dw_kernel_size", 4, "dw_kernel_size"),
        ("image_size", 18, "image_size"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, words: str) -> None:
    from edifice_vision.configs.vision_kan import TINY

    with pytest.raises(ValueError, match=words):
        edifice.config("vision_kan", **{**TINY, field: value})


def test_kan_layer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="basis"):
        KANLayer(2, 2, basis="fourier")
    with pytest.raises(ValueError, match="expected 2 input features"):
        KANLayer(2, 2)(torch.randn(3, 4))


def test_catalogue_names_are_aliases() -> None:
    cfg = edifice.config(
        "vision_kan",
        image_size=16,
        in_channels=1,
        patch_size=2,
        channels=(8, 16),
        depths=(1, 1),
        num_rbf_centers=4,
        kan_patch_size=2,
        dw_kernel_size=3,
        dropout=0.1,
        ffn_expansion=2,
        num_classes=3,
    )
    assert (cfg.grid_size, cfg.mlp_ratio, cfg.in_chans, cfg.drop_rate) == (4, 2, 1, 0.1)
