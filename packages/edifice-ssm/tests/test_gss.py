"""GSS: the gated unit and simplified DSS against an fp64 loop of the paper's pseudocode, decoding, init and config.

The oracle is written from Mehta et al. (2023), Fig. 1 (the GSS pseudocode), with the DSS-EXP kernel of Gupta et al.
(2022), Proposition 1(a), at Δ = 1: it runs the diagonal recurrence ``s_t = e^Λ s_{t-1} + ũ_t`` one step at a time in
complex128 -- no kernel, no FFT -- so the FFT convolution (``ops.long_conv``) and the parallel scan of ``step``
(``ops.linear_recurrence``) both have to reproduce it.
"""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice.testing import mutate_op, signature
from edifice.testing.tol import SCAN, Tolerance, assert_close, compare
from edifice_ssm._ssm_kernels import SSMState
from edifice_ssm.gss import GSS, GSSMixer, SimplifiedDSS

TOL = Tolerance(atol=1e-5, rtol=1e-4)  # fp32 model against the fp64 oracle
# The first failing comparison of a process imports torch._refs (torch.unravel_index, seconds): pay it at collection,
# not inside a timed test (the mutation runs make the signature tests fail on purpose).
compare(torch.zeros(1), torch.ones(1))

TINY = {"d_model": 16, "n_layers": 2, "expand": 2, "d_ssm": 4, "d_state": 8, "d_in": 5}


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def random_mixer(seed: int = 0) -> GSSMixer:
    """A GSS unit with slow and fast modes (so the kernel's tail reaches across the whole test sequence)."""
    torch.manual_seed(seed)
    mixer = GSSMixer(12, expand=2, d_ssm=3, d_state=6)
    with torch.no_grad():
        mixer.dss.lambda_re.uniform_(-4.0, 1.0)  # Re Λ in (-2.7, -0.02): memories from ~1 to ~50 steps
        mixer.dss.norm.weight.uniform_(0.5, 1.5)
        mixer.dss.norm.bias.normal_(0.0, 0.3)
        for linear in (mixer.v_proj, mixer.u_proj, mixer.uc_proj, mixer.out_proj):
            linear.bias.normal_(0.0, 0.3)
    return mixer


def gss_oracle(mixer: GSSMixer, x: torch.Tensor) -> torch.Tensor:
    """The pseudocode of Fig. 1 in fp64 (``x`` already normalised by the block), the DSS as its recurrence."""
    x = x.double()

    def dense(linear: torch.nn.Linear, h: torch.Tensor) -> torch.Tensor:
        return h @ linear.weight.double().T + linear.bias.double()

    v = torch.nn.functional.gelu(dense(mixer.v_proj, x))  # v = dense(x, F, activation='gelu')
    u = torch.nn.functional.gelu(dense(mixer.u_proj, x))  # u = dense(x, H, activation='gelu')
    dss = mixer.dss
    mean, var = u.mean(-1, keepdim=True), u.var(-1, unbiased=False, keepdim=True)
    u = (u - mean) / torch.sqrt(var + dss.norm.eps) * dss.norm.weight.double() + dss.norm.bias.double()
    lam = torch.complex(-dss.lambda_re.double().exp(), dss.lambda_im.double().exp())  # (N,)
    W = torch.complex(dss.W[..., 0].double(), dss.W[..., 1].double())  # (H, N)
    W_bar = W * (torch.exp(lam) - 1) / lam  # DSS-EXP with Δ = 1
    s = torch.zeros(x.shape[0], dss.d_model, dss.d_state, dtype=torch.complex128)
    ys = []
    for t in range(x.shape[1]):
        s = torch.exp(lam) * s + u[:, t, :, None]  # s_t = e^Λ s_{t-1} + ũ_t
        ys.append((W_bar * s).sum(-1).real + dss.D.double() * u[:, t])
    y = torch.stack(ys, 1)  # y = dss(u): linear in u
    uc = dense(mixer.uc_proj, y)  # uc = dense(y, F)
    return dense(mixer.out_proj, uc * v)  # o = dense(uc * v, E)


@signature("gss")
def test_gss_layer_matches_the_pseudocode_with_its_recurrence() -> None:
    mixer = random_mixer()
    x = randn(2, 16, 12, seed=1)
    want = gss_oracle(mixer, x)
    with torch.no_grad():
        assert_close(mixer(x), want, TOL, name="FFT convolution form")  # ops.long_conv with the DSS-EXP kernel
        state = mixer.init_state(2)
        stepped = torch.cat(
            [mixer(x[:, :5], state=state), mixer(x[:, 5:6], state=state), mixer(x[:, 6:], state=state)], 1
        )
    assert_close(stepped, want, TOL, name="recurrent form (prefill, one step, a chunk)")


@signature("gss")
def test_dss_kernel_is_the_impulse_response_of_the_recurrence() -> None:
    dss = random_mixer(seed=2).dss
    T = 20
    lam = dss.eigenvalues().to(torch.complex128)
    W_bar = dss.output_weights().to(torch.complex128)
    ell = torch.arange(T, dtype=torch.float64)
    want = (W_bar @ torch.exp(lam[:, None] * ell)).real  # K_ℓ = Re Σ_n W̄_n e^{Λ_n ℓ}
    with torch.no_grad():
        assert_close(dss.kernel(T), want, TOL, name="kernel")
        # The recurrence fed a unit impulse (after the norm) returns K plus the D skip at t = 0.
        state = dss.init_state(1)
        impulse = torch.zeros(1, T, dss.d_model)
        impulse[:, 0] = 1.0
        a = torch.exp(dss.eigenvalues())
        s = torch.zeros(dss.d_model, dss.d_state, dtype=torch.complex64)
        response = []
        for t in range(T):
            s = a * s + impulse[0, t, :, None]
            response.append((dss.output_weights() * s).sum(-1).real)
    assert_close(torch.stack(response, 1), want, TOL, name="impulse response")
    assert state.h.shape == (1, dss.d_model, dss.d_state, 2)


def test_mutated_long_conv_breaks_the_oracle() -> None:
    with mutate_op("long_conv"), pytest.raises(AssertionError):
        test_gss_layer_matches_the_pseudocode_with_its_recurrence()


def _build(seed: int = 0, **overrides: object) -> GSS:
    torch.manual_seed(seed)
    model = edifice.build("gss", **{**TINY, **overrides})
    assert isinstance(model, GSS)
    return model


def test_model_step_reproduces_forward_with_a_constant_fp32_state() -> None:
    model = _build(seed=3).eval()
    x = randn(2, 13, TINY["d_in"], seed=4)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2)
        shapes = [s.h.shape for s in state.layers]
        pieces = []
        for start, stop in ((0, 6), (6, 7), (7, 8), (8, 13)):
            y, state = model.step(x[:, start:stop], state)
            pieces.append(y)
            assert [s.h.shape for s in state.layers] == shapes
    assert_close(torch.cat(pieces, 1), want, SCAN)
    assert all(isinstance(s, SSMState) and s.h.dtype == torch.float32 for s in state.layers)
    assert shapes[0] == (2, TINY["d_ssm"], TINY["d_state"], 2)


def test_left_padding_gives_the_unpadded_result() -> None:
    model = _build(seed=5).eval()
    x = randn(2, 9, TINY["d_in"], seed=6)
    mask = torch.tensor([[False] * 3 + [True] * 6, [True] * 9])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        alone = model(x=x[:1, 3:])
    assert_close(got[0, 3:], alone[0], SCAN)


def test_initialisation_follows_the_paper_and_flax() -> None:
    torch.manual_seed(0)
    mixer = GSSMixer(64, expand=4, d_ssm=1024, d_state=1024)
    for linear in (mixer.v_proj, mixer.u_proj, mixer.uc_proj, mixer.out_proj):
        w = linear.weight
        fan_in = w.shape[1]
        assert abs(w.std().item() * math.sqrt(fan_in) - 1.0) < 0.05  # LeCun normal: variance 1 / fan_in
        assert w.abs().max().item() <= 2.0 / math.sqrt(fan_in) / 0.8796256610342398 + 1e-6  # truncated at 2σ
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    dss = mixer.dss
    for p in (dss.lambda_re, dss.lambda_im, dss.W, dss.D):
        assert abs(p.mean().item()) < 0.15 and abs(p.std().item() - 1.0) < 0.15  # random N(0, 1)
    assert (dss.eigenvalues().real < 0).all()  # stable by construction


def test_config_defaults_aliases_and_errors() -> None:
    config = edifice.config("gss", hidden_size=32, state_size=16, expand_factor=2, num_layers=1)
    assert (config.d_model, config.d_state, config.expand, config.n_layers) == (32, 16, 2, 1)
    assert config.ssm_width == 8 and config.d_inner == 64  # H = E / 4, F = expand * E
    assert edifice.config("gss", d_model=2).ssm_width == 1
    with pytest.raises(edifice.ConfigError, match="expand"):
        edifice.config("gss", expand=0)
    with pytest.raises(edifice.ConfigError, match="activation"):
        edifice.config("gss", activation="swishy")
    with pytest.raises(ValueError, match="d_state"):
        SimplifiedDSS(4, 0)
    with pytest.raises(ValueError, match="expand"):
        GSSMixer(8, expand=0)
    assert edifice.blocks.get("gss") is GSSMixer  # registered for other families' hybrids
