"""Properties of the delta-rule entries: special cases that reduce to each other, padding, chunking, state, configs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.errors import ConfigError
from edifice_recurrent._delta_layers import DeltaState

# The first assert_close of a process imports torch.distributed.tensor (seconds): pay it at collection.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

TOL = 2e-5
ARCHS = ("delta_net", "gated_delta_net", "delta_product")
SMALL = {"d_model": 16, "n_layers": 2, "n_heads": 2, "head_dim": 4, "d_ff": 24, "chunk_size": 4}


def build(arch: str, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return edifice.build(arch, **{**SMALL, **overrides}).eval()


def features(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_delta_product_with_one_householder_step_is_delta_net() -> None:
    # n_h = 1 turns eq. 4 of Siems et al. into DeltaNet's eq. 1: same parameters, same function.
    product = build("delta_product", n_householder=1, allow_neg_eigval=False, use_gate=False, expand_v=1.0)
    delta = build("delta_net")
    delta.load_state_dict(product.state_dict())
    x = features(2, 9, 16)
    with torch.no_grad():
        torch.testing.assert_close(product(x), delta(x), atol=TOL, rtol=TOL)


def test_gated_delta_net_without_decay_is_delta_net() -> None:
    # A = exp(A_log) = 0 gives α_t = 1 for every token: Gated DeltaNet's eq. 10 becomes DeltaNet's eq. 1.
    gated = build("gated_delta_net", expand_v=1.0, use_gate=False)
    with torch.no_grad():
        for layer in gated.layers:
            layer.mixer.A_log.fill_(-torch.inf)
    delta = build("delta_net")
    missing, unexpected = delta.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and all(k.split(".")[-1] in ("A_log", "dt_bias", "weight") for k in unexpected)
    x = features(2, 9, 16)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), delta(x), atol=TOL, rtol=TOL)
        # With decay, the same weights give a different function.
        gated.layers[0].mixer.A_log.zero_()
        assert not torch.allclose(gated(x), delta(x), atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunk_size_does_not_change_the_output(arch: str) -> None:
    x = features(2, 13, 16)
    with torch.no_grad():
        outs = [build(arch, chunk_size=c)(x) for c in (1, 5, 64)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=TOL, rtol=TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padding_gives_the_unpadded_result(arch: str) -> None:
    model = build(arch, vocab_size=20)
    ids = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(2))
    pad = 3
    padded = torch.cat([torch.zeros(2, pad, dtype=torch.long), ids], 1)
    mask = torch.ones(2, 8 + pad, dtype=torch.bool)
    mask[:, :pad] = False
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=padded, attention_mask=mask)[:, pad:], model(input_ids=ids))


@pytest.mark.parametrize("arch", ARCHS)
def test_decoding_state_is_constant_size_and_fp32(arch: str) -> None:
    model = build(arch)
    state = model.init_state(2)
    shapes = [(tuple(s.recurrent.shape), [tuple(c.shape) for c in s.conv]) for s in state.layers]
    x = features(2, 6, 16)
    with torch.no_grad():
        model.step(x[:, :3], state)
        for t in range(3, 6):
            model.step(x[:, t : t + 1], state)
    for layer_state, (recurrent, conv) in zip(state.layers, shapes, strict=True):
        assert isinstance(layer_state, DeltaState)
        assert layer_state.recurrent.dtype == torch.float32
        assert tuple(layer_state.recurrent.shape) == recurrent == (2, 2, 4, model.config.head_v_size)
        assert [tuple(c.shape) for c in layer_state.conv] == conv


@pytest.mark.parametrize(("arch", "extra"), [("gated_delta_net", {}), ("delta_product", {"use_forget_gate": True})])
def test_decay_initialisation_is_mamba2s(arch: str, extra: dict[str, Any]) -> None:
    # As fla's Gated DeltaNet / Gated DeltaProduct: A = exp(A_log) ~ U(0, 16) per head, and Δ = softplus(dt_bias)
    # log-uniform in [1e-3, 0.1]. 256 heads make the statistics sharp enough to catch another initialisation.
    torch.manual_seed(3)
    model = edifice.build(arch, d_model=32, n_layers=1, n_heads=256, head_dim=2, expand_v=1.0, d_ff=0, **extra)
    mixer = model.layers[0].mixer
    A = mixer.A_log.detach().exp()
    assert float(A.min()) >= 0 and float(A.max()) <= 16
    assert abs(float(A.mean()) - 8) < 1.0 and abs(float(A.std()) - 16 / 12**0.5) < 0.7
    log_dt = torch.nn.functional.softplus(mixer.dt_bias.detach()).log()
    lo, hi = torch.tensor(1e-3).log(), torch.tensor(0.1).log()
    assert float(log_dt.min()) >= lo - 1e-4 and float(log_dt.max()) <= hi + 1e-4
    assert abs(float(log_dt.mean()) - float(lo + hi) / 2) < 0.3  # uniform in log space
    assert abs(float(log_dt.std()) - float(hi - lo) / 12**0.5) < 0.2


@pytest.mark.parametrize("arch", ARCHS)
def test_short_convolutions_start_as_fla_layers_do(arch: str) -> None:
    # fla's models initialise every nn.Conv1d (the short convolutions) like the linears: N(0, 0.02²), no bias.
    torch.manual_seed(4)
    model = edifice.build(arch, d_model=64, n_layers=1, n_heads=4, d_ff=0, conv_bias=True)
    weights = torch.cat([c.weight.detach().flatten() for c in model.layers[0].mixer.convs])
    assert abs(float(weights.std()) - 0.02) < 0.002 and abs(float(weights.mean())) < 0.002
    assert all(float(c.bias.detach().abs().max()) == 0 for c in model.layers[0].mixer.convs)


def test_delta_product_defaults_follow_the_reference_layer() -> None:
    # fla's GatedDeltaProduct layer: output gate on, values twice the key size (expand_v = 2).
    config = edifice.config("delta_product")
    assert config.use_gate and config.expand_v == 2.0


def test_gate_parameters_get_gradients() -> None:
    model = build("gated_delta_net")
    model.train()
    model(features(2, 7, 16)).square().mean().backward()
    mixer = model.layers[0].mixer
    for p in (mixer.A_log, mixer.dt_bias, mixer.a_proj.weight, mixer.b_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("arch", "overrides", "match"),
    [
        ("delta_net", {"d_model": 30, "n_heads": 4}, r"n_heads.*must divide d_model=30"),
        ("gated_delta_net", {"head_dim": 5, "expand_v": 1.5}, r"expand_v.*must be a positive integer"),
        ("delta_product", {"n_householder": 0}, r"n_householder"),
        ("delta_net", {"conv_size": 0}, r"conv_size"),
    ],
)
def test_invalid_configs_raise(arch: str, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        edifice.config(arch, **overrides)


def test_original_option_names_are_accepted() -> None:
    config = edifice.config("delta_product", hidden_size=24, num_heads=3, num_householder=3, num_layers=1)
    assert (config.d_model, config.n_heads, config.n_householder, config.n_layers) == (24, 3, 3, 1)
