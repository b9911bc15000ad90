"""S4: HiPPO-LegS against its matrix formula, the NPLR form, Algorithm 1's kernel against the bilinear recurrence."""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice_ssm._ssm_kernels import SSMState, hippo_legs, nplr_legs
from edifice_ssm.configs.s4 import S4Config
from edifice_ssm.s4 import S4SSM

TOL = 1e-5

# The first assert_close of a process imports torch.distributed.tensor (seconds): pay it at collection, not in a test.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))


def legs_formula(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S4 eq. (2), entry by entry."""
    A = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k in range(n):
            if i > k:
                A[i, k] = -math.sqrt(2 * i + 1) * math.sqrt(2 * k + 1)
            elif i == k:
                A[i, k] = -(i + 1)
    B = torch.tensor([math.sqrt(2 * i + 1) for i in range(n)], dtype=torch.float64)
    return A, B


def random_s4(H: int = 3, N: int = 8, seed: int = 0) -> S4SSM:
    """An S4SSM whose parameters are moved off their initialisation (so structure, not init, is tested)."""
    torch.manual_seed(seed)
    ssm = S4SSM(H, N)
    with torch.no_grad():
        for p in ssm.parameters():
            p.add_(0.1 * torch.randn_like(p))
        ssm.log_dt.uniform_(-2.5, -0.5)  # large steps: the kernel decays slowly and every tap matters
    return ssm


def bilinear_system(ssm: S4SSM) -> tuple[torch.Tensor, ...]:
    """Ā, B̄, C, D in fp64 straight from the parameters: A = Λ - P P* (full, conjugates included), eq. (3)."""

    def cplx(p: torch.Tensor) -> torch.Tensor:
        z = torch.complex(p[..., 0].double(), p[..., 1].double())
        return torch.cat([z, z.conj()], -1)  # (H, N)

    half = torch.complex(-ssm.log_neg_lambda_re.double().exp(), ssm.lambda_im.double())
    lam = torch.cat([half, half.conj()], -1)
    P, B, C = cplx(ssm.P.detach()), cplx(ssm.B.detach()), cplx(ssm.C.detach())
    dt = ssm.log_dt.detach().double().exp()
    N = lam.shape[-1]
    eye = torch.eye(N, dtype=torch.complex128)
    dA, dB = [], []
    for h in range(lam.shape[0]):
        A = torch.diag(lam[h]) - torch.outer(P[h], P[h].conj())
        inv = torch.linalg.inv(eye - dt[h] / 2 * A)
        dA.append(inv @ (eye + dt[h] / 2 * A))
        dB.append(inv @ B[h] * dt[h])
    return torch.stack(dA), torch.stack(dB), C, ssm.D.detach().double()


def test_hippo_legs_matches_the_matrix_formula() -> None:
    A, B = hippo_legs(7)
    want_A, want_B = legs_formula(7)
    torch.testing.assert_close(A, want_A, atol=0, rtol=0)
    torch.testing.assert_close(B, want_B, atol=0, rtol=0)


@pytest.mark.parametrize("n", [2, 8, 16])
def test_nplr_form_reconstructs_hippo_legs(n: int) -> None:
    # Theorem 1: A = V (Λ - P̃ P̃*) V* with V unitary and Re Λ = -1/2, conjugate pairs completed.
    lam, p, b, V = nplr_legs(n)
    A, B = legs_formula(n)
    Vf = torch.cat([V, V.conj()], 1)
    lam_f, p_f, b_f = torch.cat([lam, lam.conj()]), torch.cat([p, p.conj()]), torch.cat([b, b.conj()])
    torch.testing.assert_close(Vf.conj().T @ Vf, torch.eye(n, dtype=torch.complex128), atol=1e-10, rtol=0)
    rebuilt = Vf @ (torch.diag(lam_f) - torch.outer(p_f, p_f.conj())) @ Vf.conj().T
    torch.testing.assert_close(rebuilt, A.to(rebuilt.dtype), atol=1e-9, rtol=0)
    torch.testing.assert_close(Vf @ b_f, B.to(rebuilt.dtype), atol=1e-9, rtol=0)
    assert torch.allclose(lam.real, torch.full_like(lam.real, -0.5)) and bool((lam.imag > 0).all())


def test_nplr_rejects_odd_sizes() -> None:
    with pytest.raises(ValueError, match="even"):
        nplr_legs(5)


@signature("s4")
@pytest.mark.parametrize("length", [1, 7, 16])
def test_s4_kernel_equals_the_unrolled_recurrence(length: int) -> None:
    # Algorithm 1 (Cauchy + Woodbury at the roots of unity, iFFT) against K_j = C Ā^j B̄ from eqs. (3)-(4).
    ssm = random_s4()
    dA, dB, C, _ = bilinear_system(ssm)
    x, taps = dB, []
    for _ in range(length):
        taps.append((C * x).sum(-1).real)
        x = torch.einsum("hnm,hm->hn", dA, x)
    with torch.no_grad():
        got = ssm.kernel(length)
    torch.testing.assert_close(got.double(), torch.stack(taps, -1), atol=TOL, rtol=TOL)


@signature("s4")
def test_s4_convolution_and_step_equal_the_recurrence_oracle() -> None:
    ssm = random_s4(seed=1)
    dA, dB, C, D = bilinear_system(ssm)
    u = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(2))
    x = torch.zeros(2, 3, dA.shape[-1], dtype=torch.complex128)
    ys = []
    for t in range(u.shape[1]):
        x = torch.einsum("hnm,bhm->bhn", dA, x) + dB * u[:, t, :, None].double()  # x_k = Ā x_{k-1} + B̄ u_k
        ys.append((C * x).sum(-1).real + D * u[:, t].double())  # y_k = C x_k + D u_k
    want = torch.stack(ys, 1)
    state = ssm.init_state(2)
    with torch.no_grad():
        torch.testing.assert_close(ssm(u).double(), want, atol=TOL, rtol=TOL)  # FFT convolution, eq. (5)
        stepped = torch.cat([ssm(u[:, :4], state=state), ssm(u[:, 4:], state=state)], 1)
    torch.testing.assert_close(stepped.double(), want, atol=TOL, rtol=TOL)
    assert isinstance(state, SSMState) and state.h.shape == (2, 3, 8, 2)
    torch.testing.assert_close(torch.view_as_complex(state.h).to(torch.complex128), x, atol=TOL, rtol=TOL)


def test_s4_initialisation() -> None:
    torch.manual_seed(0)
    ssm = S4SSM(64, 8, dt_min=0.01, dt_max=0.05)
    # Re Λ = -1/2; Im Λ are the positive eigenvalues of the normal part S = A + P Pᵀ (computed here independently).
    A, _ = legs_formula(8)
    P = torch.sqrt(torch.arange(8, dtype=torch.float64) + 0.5)
    eig = torch.linalg.eigvals(A + torch.outer(P, P))
    want_im = eig.imag[eig.imag > 0].sort().values
    torch.testing.assert_close(ssm.lambda_im.detach()[0].double().sort().values, want_im, atol=1e-5, rtol=0)
    torch.testing.assert_close(ssm.log_neg_lambda_re.detach().exp(), torch.full((64, 4), 0.5))
    dt = ssm.log_dt.detach().exp()
    assert float(dt.min()) >= 0.01 - 1e-7 and float(dt.max()) <= 0.05 + 1e-7
    assert abs(float(dt.log().mean()) - (math.log(0.01) + math.log(0.05)) / 2) < 0.15  # log-uniform


def test_s4_config_errors() -> None:
    with pytest.raises(edifice.ConfigError, match="d_state"):
        edifice.config("s4", d_state=7)
    with pytest.raises(edifice.ConfigError, match="dt_min"):
        edifice.config("s4", dt_min=0.5, dt_max=0.1)
    config = edifice.config("s4", state_size=16)  # the original's option name
    assert isinstance(config, S4Config) and config.d_state == 16


def test_s4_left_padding_gives_the_unpadded_result() -> None:
    model = edifice.build("s4", d_model=8, d_state=4, d_in=3).eval()
    x = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.randn(1, 2, 3), x], 1)
    mask = torch.tensor([[False, False] + [True] * 6])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 2:], model(x), atol=TOL, rtol=TOL)


def test_s4_block_defaults_to_the_authors_glu_output() -> None:
    # state-spaces/s4 models/s4/s4.py: S4Block(final_act='glu'), a Linear(d, 2d) followed by a GLU.
    model = edifice.build("s4", d_model=8, d_state=4, n_layers=1)
    mixer = model.layers[0].mixer
    assert mixer.glu and mixer.out_proj.weight.shape == (16, 8)
