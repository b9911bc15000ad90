"""striped_hyena: the modal filter's FFT convolution against its recurrence (fp64), decoding, init, config.

The oracle runs the Hyena block of StripedHyena from its definition: the featurizer as an explicit causal sum and the
long filter as the modal recurrence ``s_t = λ s_{t-1} + x_t``, ``y_t = Re Σ_n R_n s_{t,n} + D x_t`` in complex128,
one position at a time -- no FFT and no materialised filter.
"""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice.blocks.attention import Attention
from edifice.testing import mutate_op, signature
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm._hyena import GatedConvMixer, GatedConvState
from edifice_ssm.striped_hyena import ModalFilter, StripedHyena

TOL = {"atol": 1e-5, "rtol": 1e-4}
TINY = {"d_model": 16, "n_layers": 2, "d_in": 5, "n_heads": 2, "d_state": 2, "d_ff": 32}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_mixer(seed: int = 0) -> GatedConvMixer:
    torch.manual_seed(seed)
    mixer = GatedConvMixer(6, ModalFilter(6, 3, dt_min=0.05, dt_max=0.5)).eval()
    with torch.no_grad():  # move off the initialisation: every mode, phase and skip is generic
        f = mixer.filter
        assert isinstance(f, ModalFilter)
        f.log_decay.add_(0.3 * torch.randn_like(f.log_decay))
        f.angle.add_(0.5 * torch.randn_like(f.angle))
        f.residues.normal_()
        f.D.normal_()
    return mixer


def modal_system(f: ModalFilter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``λ [D, S]``, ``R [D, S]`` (complex128) and ``D [D]`` from the parameters."""
    rho = torch.exp(-torch.exp(f.log_decay.detach().double()))
    lam = rho * torch.exp(1j * f.angle.detach().double())
    R = torch.complex(f.residues.detach().double()[..., 0], f.residues.detach().double()[..., 1])
    return lam, R, f.D.detach().double()


def causal_sum(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``y_t = Σ_{j<=t, j<L} taps[:, j] x_{t-j}``, one position at a time."""
    out = []
    for t in range(x.shape[1]):
        y = torch.zeros_like(x[:, 0])
        for j in range(min(t + 1, taps.shape[1])):
            y = y + taps[:, j] * x[:, t - j]
        out.append(y)
    return torch.stack(out, 1)


def paper_mixer(mixer: GatedConvMixer, u: torch.Tensor) -> torch.Tensor:
    """``W_out (q ⊙ (h * (k ⊙ v) + D k ⊙ v))`` with ``h * x`` as the modal recurrence, fp64."""
    f = mixer.filter
    assert isinstance(f, ModalFilter)
    u = u.double()
    z = u @ mixer.in_proj.weight.detach().double().T + mixer.in_proj.bias.detach().double()
    feat = mixer.featurizer
    z = causal_sum(z, feat.weight.detach().double().flip(-1)) + feat.bias.detach().double()
    q, k, v = z.chunk(3, dim=-1)
    x = k * v
    lam, R, D = modal_system(f)
    s = torch.zeros(u.shape[0], *lam.shape, dtype=torch.complex128)
    ys = []
    for t in range(u.shape[1]):
        s = lam * s + x[:, t, :, None]  # s_t = λ s_{t-1} + x_t
        ys.append((R * s).real.sum(-1) + D * x[:, t])  # Re Σ_n R_n s_{t,n} + D x_t
    y = q * torch.stack(ys, 1)
    return y @ mixer.out_proj.weight.detach().double().T + mixer.out_proj.bias.detach().double()


def _check_against_recurrence() -> None:
    mixer = make_mixer()
    u = randn(2, 13, 6, seed=1)
    want = paper_mixer(mixer, u)
    with torch.no_grad():
        torch.testing.assert_close(mixer(u).double(), want, **TOL)  # FFT convolution with the materialised filter
        state = mixer.init_state(2)
        stepped = torch.cat([mixer(u[:, a:b], state=state) for a, b in ((0, 5), (5, 6), (6, 7), (7, 13))], 1)
    torch.testing.assert_close(stepped.double(), want, **TOL)  # the recurrence from a constant-size state


@signature("striped_hyena")
def test_fft_convolution_with_the_modal_filter_equals_the_recurrence() -> None:
    _check_against_recurrence()


@signature("striped_hyena")
def test_modal_kernel_is_the_impulse_response_of_poles_and_residues() -> None:
    f = make_mixer(seed=2).filter
    assert isinstance(f, ModalFilter)
    lam, R, _ = modal_system(f)
    t = torch.arange(20, dtype=torch.float64)
    want = (R[..., None] * lam[..., None] ** t).real.sum(1)  # h_t = Re Σ_n R_n λ_n^t
    with torch.no_grad():
        torch.testing.assert_close(f.kernel(20).double(), want, **TOL)
    assert (lam.abs() < 1).all()  # stable by construction


@pytest.mark.parametrize("op", ["long_conv", "causal_conv1d", "linear_recurrence"])
def test_the_signature_test_breaks_when_its_ops_are_wrong(op: str) -> None:
    with mutate_op(op), pytest.raises(AssertionError):
        _check_against_recurrence()


def test_modal_filter_starts_as_an_s4d_lin_kernel() -> None:
    torch.manual_seed(3)
    f = ModalFilter(4096, 4, dt_min=0.001, dt_max=0.1)
    dt = 2 * torch.exp(f.log_decay.detach().double())  # -log|λ| = Δ/2
    assert torch.allclose(dt, dt[:, :1].expand_as(dt))  # one Δ per channel
    log_dt = dt[:, 0].log()
    assert log_dt.min() >= math.log(0.001) - 1e-6 and log_dt.max() <= math.log(0.1) + 1e-6
    assert abs(log_dt.mean().item() - (math.log(0.001) + math.log(0.1)) / 2) < 0.1  # log-uniform
    n = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(f.angle.detach().double(), math.pi * n * dt, atol=1e-6, rtol=1e-5)  # Δ π n
    lam, R, D = modal_system(f)
    A = torch.complex(torch.full((4,), -0.5, dtype=torch.float64), math.pi * n)
    C = R * A / (2 * (lam - 1))  # R = 2 C B̄ with B̄ = (λ - 1)/A: recover C ~ CN(0, 1)
    assert abs(C.real.mean().item()) < 0.03 and abs(C.abs().pow(2).mean().item() - 1) < 0.05
    assert torch.equal(D, torch.zeros(4096, dtype=torch.float64))


def _model(seed: int = 0, **overrides: object) -> StripedHyena:
    torch.manual_seed(seed)
    model = edifice.build("striped_hyena", **{**TINY, **overrides})
    assert isinstance(model, StripedHyena)
    return model.eval()


@pytest.mark.parametrize("max_len", [None, 12])
def test_step_reproduces_forward_through_hyena_and_attention_layers(max_len: int | None) -> None:
    model = _model(n_layers=4, n_kv_heads=1)
    assert [type(layer.mixer) for layer in model.layers] == [GatedConvMixer, Attention] * 2
    x = randn(2, 12, 5, seed=4)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2, max_len=max_len)
        hyena_sizes = [(s.featurizer.shape, s.filter.shape) for s in state.layers[::2]]
        pieces = []
        for a, b in ((0, 5), (5, 6), (6, 7), (7, 12)):
            y, state = model.step(x[:, a:b], state)
            pieces.append(y)
    assert_close(torch.cat(pieces, 1), want, SCAN)
    assert [(s.featurizer.shape, s.filter.shape) for s in state.layers[::2]] == hyena_sizes  # constant size
    assert isinstance(state.layers[0], GatedConvState) and state.layers[0].filter.shape == (2, 16, 2, 2)


def test_left_padding_gives_the_unpadded_result() -> None:
    model = _model(seed=5)
    x = randn(2, 9, 5, seed=6)
    mask = torch.tensor([[False] * 3 + [True] * 6, [True] * 9])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        alone = model(x=x[:1, 3:])
    torch.testing.assert_close(got[0, 3:], alone[0], **TOL)


def test_gpt2_initialisation_of_the_dense_layers() -> None:
    model = _model(seed=7, d_model=64, n_layers=4, n_heads=4)
    hyena, attn = model.layers[0], model.layers[1]
    assert abs(hyena.mixer.in_proj.weight.std().item() - 0.02) < 0.002
    out_std = 0.02 / math.sqrt(8)
    for w in (hyena.mixer.out_proj.weight, attn.mixer.o_proj.weight, hyena.ffn.down_proj.weight):
        assert abs(w.std().item() - out_std) < 0.15 * out_std
    assert hyena.mixer.in_proj.bias.abs().max() == 0


def test_config_errors_and_layout() -> None:
    config = edifice.config("striped_hyena", n_layers=5, conv_kernel_size=4, state_size=3)
    assert config.attention_indices == (1, 3) and config.short_filter_length == 4 and config.d_state == 3
    assert config.ffn_size == 192  # 8/3 * 64 rounded up to 64
    with pytest.raises(edifice.ConfigError, match="attention_layers"):
        edifice.config("striped_hyena", n_layers=2, attention_layers=(2,))
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("striped_hyena", d_model=30, n_heads=4)
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("striped_hyena", d_model=12, n_heads=4)  # head size 3 is odd: no RoPE pairs
    with pytest.raises(edifice.ConfigError, match="dt_min"):
        edifice.config("striped_hyena", dt_min=0.5, dt_max=0.1)
    model = _model(attention_layers=())
    assert all(isinstance(layer.mixer, GatedConvMixer) for layer in model.layers)
    with pytest.raises(ValueError, match="d_state"):
        ModalFilter(4, 0)
    with pytest.raises(ValueError, match="short_filter_length"):
        GatedConvMixer(4, ModalFilter(4, 1), short_filter_length=0)
    with pytest.raises(ValueError, match=r"GatedConvMixer: x expected a floating tensor \[B, T, 4\]"):
        GatedConvMixer(4, ModalFilter(4, 1))(torch.randn(1, 3, 5))
