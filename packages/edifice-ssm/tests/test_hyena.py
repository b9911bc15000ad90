"""hyena: the operator against the paper's equations as direct sums (fp64), the implicit filter, decoding, config.

The oracle below is written from Poli et al. (2023): Algorithm 1 (projection and short depthwise filters),
Definition 3.1 (the gated recurrence, first filter the identity as in the authors' code), §3.3 / Algorithm 2 (the
implicit filter ``Window(t) · FFN(PositionalEncoding(t))``), with every convolution an explicit causal sum -- no FFT.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import edifice
from edifice.testing import mutate_op, signature
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm.hyena import Hyena, HyenaFilter, HyenaOperator, HyenaState

TOL = {"atol": 1e-5, "rtol": 1e-4}
TINY = {"d_model": 16, "n_layers": 2, "d_in": 5, "order": 3, "max_len": 12, "filter_width": 8, "filter_emb_dim": 5}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_operator(seed: int = 0, **overrides: object) -> HyenaOperator:
    torch.manual_seed(seed)
    kwargs = {"order": 3, "max_len": 12, "filter_width": 16, "filter_emb_dim": 5, "filter_sine_freq": 2.0}
    return HyenaOperator(8, **{**kwargs, **overrides}).eval()  # type: ignore[arg-type]


def paper_filter(f: HyenaFilter, length: int) -> torch.Tensor:
    """``h [n, C, L]`` in fp64 from §3.3: normalized time + cos/sin bands -> Linear/sin FFN -> exp(-α t) window."""
    M, L = f.max_len, min(length, f.max_len)
    k = torch.arange(L, dtype=torch.float64)
    t = k / (M - 1)
    bands = (f.emb_dim - 1) // 2
    freqs = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)
    omega = 2 * math.pi * k / M
    z = torch.cat([t[:, None], torch.cos(freqs * omega[:, None]), -torch.sin(freqs * omega[:, None])], dim=1)
    h = z
    w = f.act.freq.detach().double()
    for linear in f.layers:
        h = torch.sin(w * (h @ linear.weight.detach().double().T + linear.bias.detach().double()))
    h = (h @ f.out.weight.detach().double().T).view(L, f.n_filters, f.channels)
    ln_target = math.log(f.target)
    alpha = torch.linspace(-ln_target / f.slow_decay, -ln_target / f.fast_decay, f.channels, dtype=torch.float64)
    h = h * torch.exp(-alpha * t[:, None])[:, None, :]
    return h.permute(1, 2, 0)


def causal_sum(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``y_t = Σ_{j<=t, j<L} taps[:, j] x_{t-j}`` one position at a time: x ``[B, T, C]``, taps ``[C, L]``."""
    out = []
    for t in range(x.shape[1]):
        y = torch.zeros_like(x[:, 0])
        for j in range(min(t + 1, taps.shape[1])):
            y = y + taps[:, j] * x[:, t - j]
        out.append(y)
    return torch.stack(out, 1)


def paper_operator(op: HyenaOperator, u: torch.Tensor) -> torch.Tensor:
    """The order-N Hyena operator from the paper's equations, fp64: ``u [B, T, D] -> [B, T, D]``."""
    D, N = op.d_model, op.order
    u = u.double()
    z = u @ op.in_proj.weight.detach().double().T + op.in_proj.bias.detach().double()  # Algorithm 1, linear
    w = op.short_conv.weight.detach().double()  # (C, K), w[:, -1] meets the current input
    z = causal_sum(z, w.flip(-1)) + op.short_conv.bias.detach().double()  # Algorithm 1, short depthwise filters
    *gates, v = z.split(D, dim=-1)
    h = paper_filter(op.filter, u.shape[1])  # (N-1, D, L)
    skip = op.filter.bias.detach().double()
    zn = gates[0] * v  # z^1
    for n in range(1, N):
        zn = gates[n] * (causal_sum(zn, h[n - 1]) + skip[n - 1] * zn)  # z^n = x^n ⊙ (h^n * z^{n-1} + D z^{n-1})
    return zn @ op.out_proj.weight.detach().double().T + op.out_proj.bias.detach().double()


def _check_against_paper(length: int) -> None:
    op = make_operator()
    u = randn(2, length, 8, seed=1)
    want = paper_operator(op, u)
    with torch.no_grad():
        got = op(u)  # FFT long convolutions
        torch.testing.assert_close(got.double(), want, **TOL)
        state = op.init_state(2)
        cut = [0, min(5, length), min(6, length), length]
        stepped = torch.cat([op(u[:, a:b], state=state) for a, b in itertools.pairwise(cut) if b > a], 1)
    torch.testing.assert_close(stepped.double(), want, **TOL)  # the windowed FIR form, from a constant-size state


@signature("hyena")
@pytest.mark.parametrize("length", [10, 17])  # 17 > max_len = 12: the last max_len positions
def test_fft_long_convolution_equals_direct_convolution_through_the_operator(length: int) -> None:
    _check_against_paper(length)


def test_a_single_position_matches_the_paper_too() -> None:
    _check_against_paper(1)  # (not a signature test: at T = 1 no wrong convolution can be told apart)


@signature("hyena")
def test_implicit_filter_length_follows_t_and_the_window_decays() -> None:
    f = make_operator(seed=2).filter
    with torch.no_grad():
        full = f.kernel(100)  # capped at max_len
        assert full.shape == (2, 8, 12)
        for T in (1, 5, 12):
            short = f.kernel(T)
            assert short.shape == (2, 8, T)  # the filter's length follows T
            torch.testing.assert_close(short, full[..., :T])  # ... and a shorter filter is a prefix of a longer one
        torch.testing.assert_close(full.double(), paper_filter(f, 12), **TOL)
        # The window: h = exp(-α t) · FFN(PE(t)), α from |ln 0.01|/1.5 to |ln 0.01|/0.3, strictly decaying in t.
        f.modulate = False
        raw = f.kernel(12)
        f.modulate = True
    _, t = f.positional_encoding(12)
    window = torch.exp(-t * f.decay_rates())  # (L, C)
    torch.testing.assert_close(full, raw * window.T, **TOL)
    assert (window[1:] < window[:-1]).all() and torch.allclose(window[0], torch.ones(8))
    alpha = f.decay_rates()
    assert alpha[0] == pytest.approx(math.log(100) / 1.5) and alpha[-1] == pytest.approx(math.log(100) / 0.3)
    assert window[-1, -1] == pytest.approx(math.exp(-math.log(100) / 0.3), rel=1e-5)  # the fastest channel


@pytest.mark.parametrize("op", ["long_conv", "causal_conv1d"])
def test_the_signature_test_breaks_when_its_ops_are_wrong(op: str) -> None:
    with mutate_op(op), pytest.raises(AssertionError):
        _check_against_paper(10)


def _model(seed: int = 0, **overrides: object) -> Hyena:
    torch.manual_seed(seed)
    model = edifice.build("hyena", **{**TINY, **overrides})
    assert isinstance(model, Hyena)
    return model.eval()


@pytest.mark.parametrize("length", [9, 20])  # 20 > max_len: decoding keeps a window of max_len positions
def test_step_reproduces_forward_with_a_constant_size_state(length: int) -> None:
    model = _model()
    x = randn(2, length, 5, seed=3)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2)
        sizes = [(s.short.shape, s.long.shape) for s in state.layers]
        pieces = []
        for a, b in ((0, 4), (4, 5), (5, 6), (6, length)):
            y, state = model.step(x[:, a:b], state)
            pieces.append(y)
            assert [(s.short.shape, s.long.shape) for s in state.layers] == sizes
    assert_close(torch.cat(pieces, 1), want, SCAN)
    layer_state = state.layers[0]
    assert isinstance(layer_state, HyenaState) and layer_state.long.dtype == torch.float32
    assert layer_state.long.shape == (2, 2, 16, 11) and layer_state.short.shape == (2, 64, 2)


def test_left_padding_gives_the_unpadded_result() -> None:
    model = _model(seed=4)
    x = randn(2, 9, 5, seed=5)
    mask = torch.tensor([[False] * 3 + [True] * 6, [True] * 9])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        alone = model(x=x[:1, 3:])
    torch.testing.assert_close(got[0, 3:], alone[0], **TOL)


def test_reset_parameters_follows_the_reference_init() -> None:
    model = _model(seed=6, d_model=64, n_layers=4, order=2, filter_width=64, max_len=64, filter_emb_dim=33)
    mixer = model.layers[0].mixer
    assert isinstance(mixer, HyenaOperator)
    assert abs(mixer.in_proj.weight.std().item() - 0.02) < 0.002 and mixer.in_proj.bias.abs().max() == 0
    out_std = 0.02 / math.sqrt(2 * 4)
    assert abs(mixer.out_proj.weight.std().item() - out_std) < 0.15 * out_std
    down = model.layers[0].ffn.down_proj.weight
    assert abs(down.std().item() - out_std) < 0.15 * out_std
    assert abs(mixer.filter.layers[0].weight.std().item() - 0.02) < 0.006  # the filter FFN too (reference code)
    assert torch.equal(mixer.filter.act.freq.detach(), torch.full((64,), 14.0))
    skip = mixer.filter.bias.detach()
    assert abs(skip.mean().item()) < 0.3 and abs(skip.std().item() - 1) < 0.3  # D ~ N(0, 1)


def test_config_errors_and_aliases() -> None:
    with pytest.raises(edifice.ConfigError, match="order"):
        edifice.config("hyena", order=1)
    with pytest.raises(edifice.ConfigError, match="filter_emb_dim"):
        edifice.config("hyena", filter_emb_dim=4)
    with pytest.raises(edifice.ConfigError, match="window_target"):
        edifice.config("hyena", window_target=2.0)
    with pytest.raises(edifice.ConfigError, match="max_len"):
        edifice.config("hyena", max_len=0)
    config = edifice.config("hyena", seq_len=64, filter_size=32, hidden_size=24, num_layers=1, embed_dim=3)
    assert (config.max_len, config.filter_width, config.d_model, config.n_layers, config.d_in) == (64, 32, 24, 1, 3)
    assert config.ffn_size == 48


def test_operator_is_registered_as_a_block_and_validates() -> None:
    cls = edifice.blocks.get("hyena")
    assert cls is HyenaOperator
    op = cls(8, order=2, max_len=4, filter_width=4)
    assert op(torch.randn(1, 6, 8)).shape == (1, 6, 8)
    with pytest.raises(
        ValueError, match=r"HyenaOperator: x expected a floating tensor \[B, T, 8\], got float32 \[1, 6, 7\]"
    ):
        op(torch.randn(1, 6, 7))
    with pytest.raises(ValueError, match="floating"):
        op(torch.ones(1, 6, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="order"):
        HyenaOperator(8, order=1)
    with pytest.raises(ValueError, match="emb_dim"):
        HyenaFilter(1, 8, 16, emb_dim=4)
    with pytest.raises(ValueError, match="max_len"):
        HyenaFilter(1, 8, 0)
