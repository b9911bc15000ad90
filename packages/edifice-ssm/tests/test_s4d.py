"""S4D: the S4D-Inv/Lin initialisations, ZOH, the Vandermonde kernel and the scan against the diagonal recurrence."""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice_ssm.s4d import S4DSSM, s4d_init

TOL = 1e-5

# The first assert_close of a process imports torch.distributed.tensor (seconds): pay it at collection, not in a test.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))


def random_s4d(discretization: str = "zoh", seed: int = 0) -> S4DSSM:
    torch.manual_seed(seed)
    ssm = S4DSSM(3, 8, discretization=discretization)
    with torch.no_grad():
        for p in ssm.parameters():
            p.add_(0.1 * torch.randn_like(p))
        ssm.log_dt.uniform_(-3.0, -1.0)
    return ssm


def discrete_system(ssm: S4DSSM) -> tuple[torch.Tensor, ...]:
    """Ā, B̄, C, D in fp64 from the parameters: ZOH exp(ΔA), (exp(ΔA) - 1)/A B, or bilinear."""
    lam = torch.complex(-ssm.log_neg_lambda_re.double().exp(), ssm.lambda_im.double())  # (H, N2)
    dt = ssm.log_dt.double().exp()[:, None]
    B = torch.view_as_complex(ssm.B.double().contiguous())
    C = torch.view_as_complex(ssm.C.double().contiguous())
    if ssm.discretization == "zoh":
        dA = torch.exp(dt * lam)
        dB = (dA - 1) / lam * B
    else:
        dA = (1 + dt * lam / 2) / (1 - dt * lam / 2)
        dB = dt / (1 - dt * lam / 2) * B
    return dA.detach(), dB.detach(), C.detach(), ssm.D.detach().double()


def recurrence(ssm: S4DSSM, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_k = Ā x_{k-1} + B̄ u_k, y_k = 2 Re(C x_k) + D u_k, one step at a time (conjugate pairs: 2 Re)."""
    dA, dB, C, D = discrete_system(ssm)
    x = torch.zeros(u.shape[0], *dA.shape, dtype=torch.complex128)
    ys = []
    for t in range(u.shape[1]):
        x = dA * x + dB * u[:, t, :, None].double()
        ys.append(2 * (C * x).sum(-1).real + D * u[:, t].double())
    return torch.stack(ys, 1), x


def test_s4d_initialisations_follow_the_formulas() -> None:
    n = 8
    inv = s4d_init("inv", n)
    lin = s4d_init("lin", n)
    for k in range(n // 2):
        assert inv[k] == complex(-0.5, n / math.pi * (n / (2 * k + 1) - 1))  # S4D-Inv
        assert lin[k] == complex(-0.5, math.pi * k)  # S4D-Lin
    with pytest.raises(ValueError, match="'inv', 'lin' or 'legs'"):
        s4d_init("fourier", n)
    ssm = S4DSSM(4, n, init="lin")
    torch.testing.assert_close(ssm.lambda_im.detach(), lin.imag.float().expand(4, -1))
    torch.testing.assert_close(torch.view_as_complex(ssm.B.detach()), torch.ones(4, n // 2, dtype=torch.complex64))


@signature("s4d")
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("length", [1, 7, 16])
def test_s4d_vandermonde_kernel_equals_the_recurrence(discretization: str, length: int) -> None:
    ssm = random_s4d(discretization)
    impulse = torch.zeros(1, length, 3)
    impulse[:, 0] = 1.0
    want, _ = recurrence(ssm, impulse)  # the impulse response is K (plus D at t = 0)
    want[:, 0] -= ssm.D.detach().double()
    with torch.no_grad():
        got = ssm.kernel(length)
    torch.testing.assert_close(got.double(), want[0].T, atol=TOL, rtol=TOL)


@signature("s4d")
def test_s4d_convolution_and_scan_equal_the_recurrence() -> None:
    ssm = random_s4d(seed=1)
    u = torch.randn(2, 11, 3, generator=torch.Generator().manual_seed(2))
    want, last = recurrence(ssm, u)
    state = ssm.init_state(2)
    with torch.no_grad():
        torch.testing.assert_close(ssm(u).double(), want, atol=TOL, rtol=TOL)  # Vandermonde kernel + FFT
        stepped = torch.cat([ssm(u[:, :5], state=state), ssm(u[:, 5:6], state=state), ssm(u[:, 6:], state=state)], 1)
    torch.testing.assert_close(stepped.double(), want, atol=TOL, rtol=TOL)  # parallel scan from the state
    torch.testing.assert_close(torch.view_as_complex(state.h).to(torch.complex128), last, atol=TOL, rtol=TOL)


def test_s4d_config() -> None:
    with pytest.raises(edifice.ConfigError, match="init"):
        edifice.config("s4d", init="random")
    with pytest.raises(edifice.ConfigError, match="discretization"):
        edifice.config("s4d", discretization="euler")
    model = edifice.build("s4d", d_model=8, d_state=4, init="legs", glu=True, norm_position="pre").eval()
    x = torch.randn(2, 5, 8)
    assert model(x).shape == (2, 5, 8)


def test_defaults_are_the_authors_standalone_s4d() -> None:
    # state-spaces/s4 models/s4/s4d.py: S4D-Lin (A = -1/2 + iπn), and the output Conv1d(H, 2H) followed by a GLU.
    torch.manual_seed(0)
    model = edifice.build("s4d", d_model=8, d_state=8, n_layers=1)
    mixer = model.layers[0].mixer
    assert mixer.glu and mixer.out_proj.weight.shape == (16, 8)
    ssm = mixer.ssm
    assert isinstance(ssm, S4DSSM)
    torch.testing.assert_close(ssm.lambda_im[0], math.pi * torch.arange(4.0))
    torch.testing.assert_close(torch.exp(ssm.log_neg_lambda_re[0]), torch.full((4,), 0.5))
