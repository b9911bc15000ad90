"""h3: the H3 layer against §3.1 / Algorithm 1 as explicit recurrences (fp64), decoding, init, config.

The oracle builds the shift SSM with its shift matrix ``A`` and ``B = e_1`` and runs ``x_t = A x_{t-1} + B K_t``; it
discretises the diagonal SSM by ZOH from the S4D parameters and runs ``s_t = Ā s_{t-1} + B̄ KV_t`` on the per-head
outer products; one position at a time, in fp64/complex128 -- no FFT and no kernel.
"""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice.blocks.attention import Attention
from edifice.testing import mutate_op, signature
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm.h3 import H3, H3Mixer, H3State

TOL = {"atol": 1e-5, "rtol": 1e-4}
TINY = {"d_model": 16, "n_layers": 2, "d_in": 5, "d_state": 4, "d_shift": 4, "head_dim": 2, "d_ff": 32}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_mixer(seed: int = 0, head_dim: int = 2) -> H3Mixer:
    torch.manual_seed(seed)
    mixer = H3Mixer(8, d_state=6, d_shift=4, head_dim=head_dim).eval()
    with torch.no_grad():
        mixer.ssm.log_dt.uniform_(-3.0, -1.0)  # steps large enough that the decays matter over 13 positions
    return mixer


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.detach().double().T + layer.bias.detach().double()


def paper_shift_ssm(mixer: H3Mixer, k: torch.Tensor) -> torch.Tensor:
    """``x_t = A x_{t-1} + B K_t``, ``K̄_t = C x_t + D K_t`` with the shift matrix ``A`` and ``B = e_1``."""
    n = mixer.d_shift
    A = torch.diag(torch.ones(n - 1, dtype=torch.float64), -1)  # A_{i, i-1} = 1: pushes the register down
    B = torch.zeros(n, dtype=torch.float64)
    B[0] = 1.0
    C, D = mixer.shift_C.detach().double(), mixer.shift_D.detach().double()  # (D, N_s), (D,)
    x = torch.zeros(k.shape[0], k.shape[2], n, dtype=torch.float64)
    out = []
    for t in range(k.shape[1]):
        x = x @ A.T + B * k[:, t, :, None]
        out.append((C * x).sum(-1) + D * k[:, t])
    return torch.stack(out, 1)


def paper_diag_ssm(mixer: H3Mixer, kv: torch.Tensor) -> torch.Tensor:
    """S4D with ZOH on ``kv [B, T, H, P, P]``: ``s_t = Ā s_{t-1} + B̄ KV_t``, ``y_t = 2 Re(C s_t) + D KV_t``."""
    ssm = mixer.ssm
    lam = torch.complex(-ssm.log_neg_lambda_re.detach().double().exp(), ssm.lambda_im.detach().double())  # (H, N2)
    dt = ssm.log_dt.detach().double().exp()[:, None]
    dA = torch.exp(dt * lam)
    dB = (dA - 1) / lam * torch.view_as_complex(ssm.B.detach().double().contiguous())
    C = torch.view_as_complex(ssm.C.detach().double().contiguous())
    D = ssm.D.detach().double()
    e = (slice(None), None, None)  # broadcast a head's SSM over its P x P entries
    s = torch.zeros(*kv.shape[:1], *kv.shape[2:], lam.shape[-1], dtype=torch.complex128)
    out = []
    for t in range(kv.shape[1]):
        s = dA[e] * s + dB[e] * kv[:, t, ..., None]
        out.append(2 * (C[e] * s).sum(-1).real + D[e] * kv[:, t])
    return torch.stack(out, 1)


def paper_h3(mixer: H3Mixer, u: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 in fp64: projections, shift SSM, outer products per head, diagonal SSM, Q contraction, W_O."""
    B, T, _ = u.shape
    H, P = mixer.n_heads, mixer.head_dim
    u = u.double()
    q, k, v = linear(mixer.q_proj, u), linear(mixer.k_proj, u), linear(mixer.v_proj, u)
    k = paper_shift_ssm(mixer, k)
    kv = k.view(B, T, H, P, 1) * v.view(B, T, H, 1, P)
    y = paper_diag_ssm(mixer, kv)
    o = (q.view(B, T, H, P, 1) * y).sum(3)  # O^(h) = Q^(h)ᵀ KV^(h)
    return linear(mixer.out_proj, o.reshape(B, T, -1))


def _check_against_paper(head_dim: int) -> None:
    mixer = make_mixer(head_dim=head_dim)
    u = randn(2, 13, 8, seed=1)
    want = paper_h3(mixer, u)
    with torch.no_grad():
        torch.testing.assert_close(mixer(u).double(), want, **TOL)  # both SSMs as FFT convolutions
        state = mixer.init_state(2)
        stepped = torch.cat([mixer(u[:, a:b], state=state) for a, b in ((0, 5), (5, 6), (6, 7), (7, 13))], 1)
    torch.testing.assert_close(stepped.double(), want, **TOL)  # both SSMs as recurrences, constant-size state


@signature("h3")
@pytest.mark.parametrize("head_dim", [1, 2])
def test_h3_layer_matches_algorithm_1_by_convolution_and_by_recurrence(head_dim: int) -> None:
    _check_against_paper(head_dim)


@signature("h3")
@pytest.mark.parametrize("lag", [1, 3])  # (lag 0 is the identity, which no wrong convolution changes)
def test_the_shift_ssm_really_shifts(lag: int) -> None:
    mixer = make_mixer(seed=2)
    with torch.no_grad():
        mixer.shift_C.zero_()
        mixer.shift_C[:, lag] = 1.0  # C = e_lag: read the register's lag-th slot
        mixer.shift_D.zero_()
    k = randn(2, 9, 8, seed=3)
    want = torch.zeros_like(k)
    want[:, lag:] = k[:, : 9 - lag]  # K̄_t = K_{t-lag}
    with torch.no_grad():
        torch.testing.assert_close(mixer.shift_ssm(k), want, atol=1e-6, rtol=0)
        state = mixer.init_state(2)
        stepped = torch.cat([mixer.shift_ssm(k[:, a:b], state=state) for a, b in ((0, 4), (4, 5), (5, 9))], 1)
    torch.testing.assert_close(stepped, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(state.shift, k[:, -3:].transpose(1, 2))  # the register: the last N_s - 1 keys


@pytest.mark.parametrize("op", ["long_conv", "causal_conv1d", "linear_recurrence"])
def test_the_signature_test_breaks_when_its_ops_are_wrong(op: str) -> None:
    with mutate_op(op), pytest.raises(AssertionError):
        _check_against_paper(2)


def _model(seed: int = 0, **overrides: object) -> H3:
    torch.manual_seed(seed)
    model = edifice.build("h3", **{**TINY, **overrides})
    assert isinstance(model, H3)
    return model.eval()


@pytest.mark.parametrize("max_len", [None, 11])
def test_step_reproduces_forward_in_hybrid_h3(max_len: int | None) -> None:
    model = _model(n_layers=3, attention_layers=(1,), n_heads=2)
    assert [type(layer.mixer) for layer in model.layers] == [H3Mixer, Attention, H3Mixer]
    x = randn(2, 11, 5, seed=4)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2, max_len=max_len)
        pieces = []
        for a, b in ((0, 4), (4, 5), (5, 6), (6, 11)):
            y, state = model.step(x[:, a:b], state)
            pieces.append(y)
    assert_close(torch.cat(pieces, 1), want, SCAN)
    layer_state = state.layers[0]
    assert isinstance(layer_state, H3State) and layer_state.diag.dtype == torch.float32
    assert layer_state.shift.shape == (2, 16, 3) and layer_state.diag.shape == (2, 8, 2, 2, 2, 2)


def test_left_padding_gives_the_unpadded_result() -> None:
    model = _model(seed=5)
    x = randn(2, 9, 5, seed=6)
    mask = torch.tensor([[False] * 3 + [True] * 6, [True] * 9])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        alone = model(x=x[:1, 3:])
    torch.testing.assert_close(got[0, 3:], alone[0], **TOL)


def test_initialisation_follows_the_reference() -> None:
    model = _model(seed=7, d_model=64, n_layers=4, d_state=64, d_shift=None, head_dim=1, d_ff=None)
    mixer = model.layers[0].mixer
    assert isinstance(mixer, H3Mixer) and mixer.d_shift == 64
    assert abs(mixer.q_proj.weight.std().item() - 0.02) < 0.002 and mixer.q_proj.bias.abs().max() == 0
    assert abs(mixer.out_proj.weight.std().item() - 0.02) < 0.002  # H3's output projection is not rescaled ...
    down = model.layers[0].ffn.down_proj.weight  # ... the MLP's is: 0.02 / sqrt(2 n_layers)
    assert abs(down.std().item() - 0.02 / math.sqrt(8)) < 0.0008
    bound = 1 / math.sqrt(64)
    assert mixer.shift_C.abs().max() <= bound and mixer.shift_C.abs().max() > 0.95 * bound  # Conv1d's init
    lam_im = mixer.ssm.lambda_im.detach()
    torch.testing.assert_close(lam_im, (math.pi * torch.arange(32.0)).expand_as(lam_im))  # S4D-Lin


def test_config_errors_and_aliases() -> None:
    config = edifice.config("h3", state_size=16, conv_size=3, hidden_size=32, num_layers=2)
    assert (config.d_state, config.shift_size, config.d_model, config.ffn_size) == (16, 3, 32, 128)
    with pytest.raises(edifice.ConfigError, match="d_state"):
        edifice.config("h3", d_state=5)
    with pytest.raises(edifice.ConfigError, match="head_dim"):
        edifice.config("h3", d_model=12, head_dim=5)
    with pytest.raises(edifice.ConfigError, match="ssm_init"):
        edifice.config("h3", ssm_init="fourier")
    with pytest.raises(edifice.ConfigError, match="attention_layers"):
        edifice.config("h3", n_layers=2, attention_layers=(5,))
    with pytest.raises(ValueError, match="head_dim"):
        H3Mixer(8, head_dim=3)
    with pytest.raises(ValueError, match=r"H3Mixer: x expected a floating tensor \[B, T, 8\]"):
        H3Mixer(8, d_state=2)(torch.randn(2, 3))
