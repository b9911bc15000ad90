"""hyena_v2 (StripedHyena 2): Hyena-SE/MR/LI against their definitions (docs/design/hyena_v2.md) in fp64, decoding.

Each oracle runs one operator one position at a time in fp64: the featurizer and the SE/MR filters as explicit
causal sums (MR with its decay applied to the free taps), the LI filter as its real modal recurrence
``s_t = λ s_{t-1} + x_t``, ``y_t = Σ_n R_n s_{t,n} + D x_t`` -- no FFT and no materialised long filter.
"""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice.blocks.attention import Attention
from edifice.testing import mutate_op, signature
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm._hyena import GatedConvMixer
from edifice_ssm.hyena_v2 import ExplicitFilter, HyenaV2, RealModalFilter

TOL = {"atol": 1e-5, "rtol": 1e-4}
TINY = {"d_model": 16, "n_layers": 2, "d_in": 5, "n_heads": 2, "d_state": 4, "d_ff": 32}
TINY_FILTERS = {"se_filter_length": 3, "mr_filter_length": 6}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_mixer(kind: str, seed: int = 0) -> GatedConvMixer:
    torch.manual_seed(seed)
    if kind == "se":
        inner: ExplicitFilter | RealModalFilter = ExplicitFilter(6, 4, groups=3)
    elif kind == "mr":
        inner = ExplicitFilter(6, 9, groups=2, decay=(0.0, 1.0), skip=True, init_scale=1.0)
    else:
        inner = RealModalFilter(6, 3)
    mixer = GatedConvMixer(6, inner).eval()
    with torch.no_grad():  # generic values: skips, modes and rates away from their initialisation
        if isinstance(inner, RealModalFilter):
            inner.p.add_(0.5 * torch.randn_like(inner.p) + 1.5)  # faster decays, so that they matter over T = 13
            inner.R.normal_()
        if inner.D is not None:
            inner.D.normal_()
    return mixer


def causal_sum(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``y_t = Σ_{j<=t, j<L} taps[:, j] x_{t-j}``, one position at a time."""
    out = []
    for t in range(x.shape[1]):
        y = torch.zeros_like(x[:, 0])
        for j in range(min(t + 1, taps.shape[1])):
            y = y + taps[:, j] * x[:, t - j]
        out.append(y)
    return torch.stack(out, 1)


def paper_explicit(f: ExplicitFilter, x: torch.Tensor) -> torch.Tensor:
    """Hyena-SE / MR: ``h_t = ĥ_t exp(-r_g t/(L-1))`` (``r_g = 10^linspace(lo, hi)``; no decay for SE), a FIR sum."""
    taps = f.h.detach().double()  # (G, L)
    if f.decay is not None:
        rates = 10 ** torch.linspace(f.decay[0], f.decay[1], f.groups, dtype=torch.float64)
        t = torch.arange(f.length, dtype=torch.float64) / max(f.length - 1, 1)
        taps = taps * torch.exp(-rates[:, None] * t)
    taps = taps.repeat_interleave(f.channels // f.groups, 0)  # consecutive channels share a group's filter
    y = causal_sum(x, taps)
    return y if f.D is None else y + f.D.detach().double() * x


def paper_modal(f: RealModalFilter, x: torch.Tensor) -> torch.Tensor:
    """Hyena-LI: ``s_t = λ s_{t-1} + x_t``, ``y_t = Σ_n R_n s_{t,n} + D x_t`` with ``λ = exp(-exp(p + γ))``."""
    lam = torch.exp(-torch.exp(f.p.detach().double() + f.gamma.detach().double()))  # (D, S)
    R, D = f.R.detach().double(), f.D.detach().double()
    s = torch.zeros(x.shape[0], *lam.shape, dtype=torch.float64)
    out = []
    for t in range(x.shape[1]):
        s = lam * s + x[:, t, :, None]
        out.append((R * s).sum(-1) + D * x[:, t])
    return torch.stack(out, 1)


def paper_mixer(mixer: GatedConvMixer, u: torch.Tensor) -> torch.Tensor:
    """``W_out (q ⊙ filter(k ⊙ v))`` with ``(q, k, v)`` from the projection and the featurizer, fp64."""
    u = u.double()
    z = u @ mixer.in_proj.weight.detach().double().T + mixer.in_proj.bias.detach().double()
    feat = mixer.featurizer
    z = causal_sum(z, feat.weight.detach().double().flip(-1)) + feat.bias.detach().double()
    q, k, v = z.chunk(3, dim=-1)
    f = mixer.filter
    y = paper_explicit(f, k * v) if isinstance(f, ExplicitFilter) else paper_modal(f, k * v)  # type: ignore[arg-type]
    return (q * y) @ mixer.out_proj.weight.detach().double().T + mixer.out_proj.bias.detach().double()


def _check_against_definition(kind: str) -> None:
    mixer = make_mixer(kind)
    u = randn(2, 13, 6, seed=1)
    want = paper_mixer(mixer, u)
    with torch.no_grad():
        torch.testing.assert_close(mixer(u).double(), want, **TOL)  # direct FIR (SE, MR) or FFT (LI)
        state = mixer.init_state(2)
        stepped = torch.cat([mixer(u[:, a:b], state=state) for a, b in ((0, 5), (5, 6), (6, 7), (7, 13))], 1)
    torch.testing.assert_close(stepped.double(), want, **TOL)  # FIR window (SE, MR) or modal recurrence (LI)


@signature("hyena_v2")
@pytest.mark.parametrize("kind", ["se", "mr", "li"])
def test_each_hyena_operator_matches_its_definition_in_parallel_and_recurrent_form(kind: str) -> None:
    _check_against_definition(kind)


@signature("hyena_v2")
def test_the_medium_filter_is_regularized_by_its_decay() -> None:
    f = ExplicitFilter(8, 16, groups=4, decay=(0.0, 2.0), skip=True, init_scale=1.0)
    window = f.decay_window()
    rates = torch.tensor([1.0, 10 ** (2 / 3), 10 ** (4 / 3), 100.0], dtype=torch.float64)  # 10^0 .. 10^2
    t = torch.arange(16, dtype=torch.float64) / 15
    torch.testing.assert_close(window.double(), torch.exp(-rates[:, None] * t), atol=1e-7, rtol=1e-5)
    with torch.no_grad():
        taps, free = f.kernel(), f.h.repeat_interleave(2, 0)
    assert torch.equal(taps[:, 0], free[:, 0])  # no decay at t = 0
    assert (taps[:, 1:].abs() < free[:, 1:].abs()).all()  # strictly shrunk after
    assert (window[:, 1:] < window[:, :-1]).all() and (window[1:, 1:] < window[:-1, 1:]).all()  # in t, across groups
    assert torch.equal(taps[0], taps[1]) and not torch.equal(taps[1], taps[2])  # groups of consecutive channels


@pytest.mark.parametrize(("kind", "op"), [("li", "long_conv"), ("li", "linear_recurrence"), ("mr", "causal_conv1d")])
def test_the_signature_test_breaks_when_its_ops_are_wrong(kind: str, op: str) -> None:
    with mutate_op(op), pytest.raises(AssertionError):
        _check_against_definition(kind)


def _model(seed: int = 0, **overrides: object) -> HyenaV2:
    torch.manual_seed(seed)
    model = edifice.build("hyena_v2", **{**TINY, **TINY_FILTERS, **overrides})
    assert isinstance(model, HyenaV2)
    return model.eval()


@pytest.mark.parametrize("max_len", [None, 12])
def test_step_reproduces_forward_through_the_whole_multi_hybrid(max_len: int | None) -> None:
    model = _model(n_layers=4, filter_groups=4, mr_init_scale=1.0)  # the default pattern's first four: SE MR LI MHA
    kinds = [
        type(layer.mixer.filter).__name__ if isinstance(layer.mixer, GatedConvMixer) else "MHA"
        for layer in model.layers
    ]
    assert kinds == ["ExplicitFilter", "ExplicitFilter", "RealModalFilter", "MHA"]
    x = randn(2, 12, 5, seed=2)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2, max_len=max_len)
        sizes = [s.filter.shape for s in state.layers if not isinstance(s, type(state.layers[3]))]
        pieces = []
        for a, b in ((0, 5), (5, 6), (6, 7), (7, 12)):
            y, state = model.step(x[:, a:b], state)
            pieces.append(y)
    assert_close(torch.cat(pieces, 1), want, SCAN)
    assert [s.filter.shape for s in state.layers if not isinstance(s, type(state.layers[3]))] == sizes
    assert [tuple(s.filter.shape) for s in state.layers[:3]] == [(2, 16, 2), (2, 16, 5), (2, 16, 4)]


def test_left_padding_gives_the_unpadded_result() -> None:
    model = _model(seed=3, n_layers=4, layer_pattern=("se", "mr", "li", "attn"), mr_init_scale=1.0)
    x = randn(2, 9, 5, seed=4)
    mask = torch.tensor([[False] * 3 + [True] * 6, [True] * 9])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        alone = model(x=x[:1, 3:])
    torch.testing.assert_close(got[0, 3:], alone[0], **TOL)


def test_striped_false_drops_attention() -> None:
    model = _model(n_layers=4, striped=False, layer_pattern=("se", "attn", "li"))
    assert not any(isinstance(layer.mixer, Attention) for layer in model.layers)
    assert model.config.pattern == ("se", "li") and model.config.layer_kind(3) == "li"


def test_filter_initialisation_follows_savanna() -> None:
    torch.manual_seed(5)
    mr = ExplicitFilter(512, 128, decay=(0.0, 2.0), skip=True, init_scale=1e-5)
    assert abs(mr.h.std().item() - 1e-5 / math.sqrt(128)) < 0.05 * 1e-5 / math.sqrt(128)
    assert mr.D is not None and torch.equal(mr.D.detach(), torch.zeros(512))
    se = ExplicitFilter(512, 7)
    assert se.D is None and se.h.abs().max() <= 1 / math.sqrt(7)
    li = RealModalFilter(512, 16)
    assert torch.equal(li.p.detach(), torch.full((512, 16), -1.0))
    g = li.gamma.detach().exp()
    assert g.min() >= 0.01 and g.max() <= 0.1 and abs(g.mean().item() - 0.055) < 0.002  # U(0.01, 0.1)
    assert abs(li.R.std().item() - 0.1 / 4) < 0.002 and torch.equal(li.D.detach(), torch.zeros(512))
    model = _model(seed=6, d_model=64, n_layers=4, layer_pattern=("li", "attn"), n_heads=4)
    out_std = 0.02 / math.sqrt(8)
    assert abs(model.layers[0].mixer.out_proj.weight.std().item() - out_std) < 0.15 * out_std
    assert abs(model.layers[1].mixer.q_proj.weight.std().item() - 0.02) < 0.002


def test_config_errors_and_aliases() -> None:
    config = edifice.config("hyena_v2", filter_size=64, state_size=8, conv_kernel_size=4)
    assert (config.mr_filter_length, config.d_state, config.short_filter_length) == (64, 8, 4)
    assert config.layer_pattern == ("se", "mr", "li", "attn", "se", "mr", "li") and config.groups == 64
    with pytest.raises(edifice.ConfigError, match="layer_pattern"):
        edifice.config("hyena_v2", layer_pattern=("se", "lstm"))
    with pytest.raises(edifice.ConfigError, match="layer_pattern"):
        edifice.config("hyena_v2", layer_pattern=())
    with pytest.raises(edifice.ConfigError, match="striped"):
        edifice.config("hyena_v2", layer_pattern=("attn",), striped=False)
    with pytest.raises(edifice.ConfigError, match="filter_groups"):
        edifice.config("hyena_v2", filter_groups=5)
    with pytest.raises(edifice.ConfigError, match="mr_decay_min"):
        edifice.config("hyena_v2", mr_decay_min=3.0)
    with pytest.raises(ValueError, match="groups"):
        ExplicitFilter(6, 3, groups=4)
    with pytest.raises(ValueError, match="gamma"):
        RealModalFilter(6, 3, gamma_min=0.5, gamma_max=0.1)
