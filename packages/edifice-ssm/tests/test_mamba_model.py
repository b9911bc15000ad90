"""mamba and its scan variants: one function, decoding, initialisation statistics, config and block registration."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm.mamba import Mamba, MambaMixer, MambaState

SCANS = ("mamba", "mamba_cumsum", "mamba_hillis_steele")
TINY = {"d_model": 16, "n_layers": 2, "d_state": 4, "d_conv": 3, "d_in": 5}


def _build(name: str, seed: int = 0, **overrides: object) -> Mamba:
    torch.manual_seed(seed)
    model = edifice.build(name, **{**TINY, **overrides})
    assert isinstance(model, Mamba)
    return model


def _x(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, TINY["d_in"], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("length", [1, 7, 40])
def test_scan_variants_give_the_same_outputs_and_gradients(length: int) -> None:
    base = _build("mamba")
    x = _x(2, length)
    target = torch.randn(2, length, TINY["d_model"], generator=torch.Generator().manual_seed(2))
    results = []
    for name in SCANS:
        model = _build(name)
        model.load_state_dict(base.state_dict())
        assert model.config.scan == {"mamba": "chunked", "mamba_cumsum": "cumsum"}.get(name, "hillis_steele")
        xg = x.clone().requires_grad_(True)
        y = model(x=xg)
        (y * target).sum().backward()
        # A parameter the graph never reached (A at T = 1 without an initial state) has gradient zero.
        grads = {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in model.named_parameters()}
        results.append((y.detach(), xg.grad, grads))
    y0, gx0, g0 = results[0]
    for name, (y, gx, g) in zip(SCANS[1:], results[1:], strict=True):
        assert_close(y, y0, SCAN, name=f"{name} output")
        assert_close(gx, gx0, SCAN, name=f"{name} input gradient")
        for key in g0:
            assert_close(g[key], g0[key], SCAN, name=f"{name} grad {key}")


@pytest.mark.parametrize("name", SCANS)
def test_step_reproduces_forward_at_every_prefix_with_constant_state(name: str) -> None:
    model = _build(name, seed=3).eval()
    x = _x(2, 11, seed=4)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2)
        sizes = [(s.conv.shape, s.ssm.shape) for s in state.layers]
        pieces = []
        for start, stop in ((0, 4), (4, 5), (5, 6), (6, 11)):  # prefill, two decode steps, a chunk
            y, state = model.step(x[:, start:stop], state)
            pieces.append(y)
            assert [(s.conv.shape, s.ssm.shape) for s in state.layers] == sizes  # constant size
    assert_close(torch.cat(pieces, 1), want, SCAN)
    layer_state = state.layers[0]
    assert isinstance(layer_state, MambaState) and layer_state.ssm.dtype == torch.float32
    E, N, K = 2 * TINY["d_model"], TINY["d_state"], TINY["d_conv"]
    assert layer_state.conv.shape == (2, E, K - 1) and layer_state.ssm.shape == (2, E, N)


def test_padding_leaves_the_state_untouched() -> None:
    # Δ = 0 at padded positions: Ā = 1 and B̄ = 0, so a padded step changes no SSM state.
    model = _build("mamba", seed=5).eval()
    x = _x(2, 6, seed=6)
    with torch.no_grad():
        state = model.init_state(2)
        model.step(x[:, :4], state)
        before = [s.ssm.clone() for s in state.layers]
        model.step(x[:, 4:5], state, attention_mask=torch.zeros(2, 1, dtype=torch.bool))
    for b, s in zip(before, state.layers, strict=True):
        assert torch.equal(b, s.ssm)


def test_cumsum_variant_matches_over_a_long_sequence_with_sharp_decays() -> None:
    # Large Δ (sharp decays) over many chunks: the cumulative sums must neither overflow nor cancel.
    model = _build("mamba_cumsum", seed=7).eval()
    ref = _build("mamba", seed=7).eval()
    with torch.no_grad():
        for m in (model, ref):
            for layer in m.layers:
                layer.mixer.dt_proj.bias.fill_(8.0)  # Δ ≈ 8, Δ A as low as -8 N per step
    ref.load_state_dict(model.state_dict())
    x = _x(1, 300, seed=8)
    with torch.no_grad():
        y = model(x=x)
        assert torch.isfinite(y).all()
        assert_close(y, ref(x=x), SCAN)


def test_reset_parameters_follows_the_paper() -> None:
    mixer = MambaMixer(64, d_state=8, expand=8, dt_min=0.001, dt_max=0.1, dt_rank=4)  # E = 512 channels
    torch.manual_seed(0)
    mixer.reset_parameters()
    E, N = 512, 8
    # S4D-real: A = -(1..N) in every channel.
    A = -torch.exp(mixer.A_log)
    assert torch.allclose(A, -torch.arange(1, N + 1, dtype=torch.float32).expand(E, N))
    assert torch.equal(mixer.D, torch.ones(E))
    # Δ = softplus(bias) log-uniform in [dt_min, dt_max]: log Δ ~ U(log 1e-3, log 1e-1).
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    log_dt = dt.log()
    lo, hi = math.log(0.001), math.log(0.1)
    assert abs(log_dt.mean().item() - (lo + hi) / 2) < 0.25  # U(a, b): sd (b - a) / sqrt(12 E) = 0.06
    assert abs(log_dt.std().item() - (hi - lo) / math.sqrt(12)) < 0.15
    # dt_proj weight ~ U(-r**-0.5, r**-0.5) with r = dt_rank = 4.
    w = mixer.dt_proj.weight
    assert w.abs().max() <= 0.5 and abs(w.std().item() - 0.5 / math.sqrt(3)) < 0.03


def test_model_scales_output_projections_by_depth() -> None:
    # out_proj starts at PyTorch's Linear init divided by sqrt(n_layers) (the reference's prenorm rescale).
    model = _build("mamba", seed=9, d_model=32, n_layers=4, expand=4)
    fan_in = 4 * 32
    bound = 1 / math.sqrt(fan_in) / math.sqrt(4)  # kaiming_uniform(a=sqrt(5)) bound is 1/sqrt(fan_in)
    for layer in model.layers:
        w = layer.mixer.out_proj.weight
        assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.9 * bound


def test_config_fixes_the_scan_and_accepts_original_option_names() -> None:
    with pytest.raises(edifice.ConfigError, match="scan"):
        edifice.config("mamba_cumsum", scan="chunked")
    config = edifice.config("mamba", state_size=8, expand_factor=3, conv_size=2, hidden_size=24, num_layers=1)
    assert (config.d_state, config.expand, config.d_conv, config.d_model, config.n_layers) == (8, 3, 2, 24, 1)
    assert config.time_step_rank == 2  # ceil(24 / 16)
    with pytest.raises(edifice.ConfigError, match="dt_min"):
        edifice.config("mamba", dt_min=0.5, dt_max=0.1)
    with pytest.raises(edifice.ConfigError, match="scan"):
        edifice.config("mamba", scan="blelloch")


def test_mixer_is_registered_as_a_block_and_validates() -> None:
    cls = edifice.blocks.get("mamba")
    assert cls is MambaMixer
    mixer = cls(8, d_state=2, d_conv=2)
    x = torch.randn(1, 5, 8)
    assert mixer(x).shape == (1, 5, 8)
    with pytest.raises(ValueError, match="scan"):
        MambaMixer(8, scan="blelloch")
    with pytest.raises(ValueError, match="d_state"):
        MambaMixer(8, d_state=0)
