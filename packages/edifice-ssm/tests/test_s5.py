"""S5: HiPPO-N block initialisation, and the parallel scan against the sequential MIMO recurrence."""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice_ssm.s5 import S5SSM, hippo_n_blocks

TOL = 1e-5

# The first assert_close of a process imports torch.distributed.tensor (seconds): pay it at collection, not in a test.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))


def random_s5(discretization: str = "zoh", seed: int = 0) -> S5SSM:
    torch.manual_seed(seed)
    ssm = S5SSM(3, 8, n_blocks=2, discretization=discretization)
    with torch.no_grad():
        for p in ssm.parameters():
            p.add_(0.1 * torch.randn_like(p))
        ssm.log_dt.uniform_(-3.0, -1.0)
    return ssm


def sequential(ssm: S5SSM, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_k = Λ̄ x_{k-1} + B̄ u_k, y_k = 2 Re(C̃ x_k) + D u_k, one step at a time, in fp64 from the parameters."""
    lam = torch.complex(-ssm.log_neg_lambda_re.double().exp(), ssm.lambda_im.double())  # (P2,)
    dt = ssm.log_dt.double().exp()
    B = torch.view_as_complex(ssm.B.double().contiguous())  # (P2, H)
    C = torch.view_as_complex(ssm.C.double().contiguous())  # (H, P2)
    if ssm.discretization == "zoh":
        dA = torch.exp(lam * dt)
        dB = ((dA - 1) / lam)[:, None] * B
    else:
        dA = (1 + dt * lam / 2) / (1 - dt * lam / 2)
        dB = (dt / (1 - dt * lam / 2))[:, None] * B
    x = torch.zeros(u.shape[0], lam.shape[0], dtype=torch.complex128)
    ys = []
    for t in range(u.shape[1]):
        x = dA * x + u[:, t].double().to(dB.dtype) @ dB.T
        ys.append(2 * (x @ C.T).real + ssm.D.double() * u[:, t].double())
    return torch.stack(ys, 1).detach(), x.detach()


@signature("s5")
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("length", [2, 7, 40])
def test_s5_parallel_scan_equals_the_sequential_recurrence(discretization: str, length: int) -> None:
    ssm = random_s5(discretization)
    u = torch.randn(2, length, 3, generator=torch.Generator().manual_seed(1))
    want, last = sequential(ssm, u)
    with torch.no_grad():
        torch.testing.assert_close(ssm(u).double(), want, atol=TOL, rtol=TOL)
        state = ssm.init_state(2)
        split = max(1, length // 2)
        stepped = torch.cat([ssm(u[:, :split], state=state)] + [ssm(u[:, t : t + 1], state=state)
                             for t in range(split, length)], 1)  # fmt: skip
    torch.testing.assert_close(stepped.double(), want, atol=TOL, rtol=TOL)
    torch.testing.assert_close(torch.view_as_complex(state.h).to(torch.complex128), last, atol=TOL, rtol=TOL)


def test_s5_hippo_n_blocks() -> None:
    # HiPPO-N = the normal part of HiPPO-LegS, S = A + P Pᵀ: Re λ = -1/2 and Im λ its (positive) eigenvalues.
    n = 4
    S = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k in range(n):
            sign = -1.0 if i > k else 1.0
            S[i, k] = -0.5 if i == k else sign * math.sqrt(i + 0.5) * math.sqrt(k + 0.5)
    eig = torch.linalg.eigvals(S)
    lam, V = hippo_n_blocks(8, 2)
    assert lam.shape == (4,) and V.shape == (8, 4)
    torch.testing.assert_close(lam.real, torch.full((4,), -0.5, dtype=torch.float64))
    want = eig.imag[eig.imag > 0].sort().values
    torch.testing.assert_close(lam.imag[:2].sort().values, want, atol=1e-10, rtol=0)
    torch.testing.assert_close(lam.imag[2:].sort().values, want, atol=1e-10, rtol=0)
    # Block diagonal: the second block's eigenvectors live on the second half of the state only.
    assert V[:4, 2:].abs().max() == 0 and V[4:, :2].abs().max() == 0
    Vb = torch.cat([V[:4, :2], V[:4, :2].conj()], 1)
    torch.testing.assert_close(Vb @ torch.diag(torch.cat([lam[:2], lam[:2].conj()])) @ Vb.conj().T, S.to(Vb.dtype))


def test_s5_config() -> None:
    with pytest.raises(edifice.ConfigError, match="n_blocks"):
        edifice.config("s5", d_state=8, n_blocks=3)
    with pytest.raises(edifice.ConfigError, match="n_blocks"):
        edifice.config("s5", d_state=12, n_blocks=4)
    dt = S5SSM(4, 16, dt_min=0.01, dt_max=0.02).log_dt.detach().exp()
    assert dt.shape == (8,) and float(dt.min()) >= 0.01 - 1e-7 and float(dt.max()) <= 0.02 + 1e-7
