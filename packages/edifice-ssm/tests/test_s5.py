"""S5: HiPPO-N block initialisation, and the parallel scan against the sequential MIMO recurrence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

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


def hippo_n(n: int) -> torch.Tensor:
    """HiPPO-N, the normal part of HiPPO-LegS ``S = A + P Pᵀ`` (S5 §4.1), written from its entries in fp64."""
    S = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k in range(n):
            sign = -1.0 if i > k else 1.0
            S[i, k] = -0.5 if i == k else sign * math.sqrt(i + 0.5) * math.sqrt(k + 0.5)
    return S


def test_s5_hippo_n_blocks() -> None:
    # HiPPO-N = the normal part of HiPPO-LegS, S = A + P Pᵀ: Re λ = -1/2 and Im λ its (positive) eigenvalues.
    n = 4
    S = hippo_n(n)
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


def test_s5_initialisation_is_hippo_n_with_lecun_b() -> None:
    # reset_parameters itself (not only hippo_n_blocks) must give Λ = the eigenvalues of HiPPO-N, block by block, and
    # B Lecun-normal on (P, H) as the authors' code: std 1/sqrt(P), truncated at 2 std (recovered as 2 Re(V B̃)).
    torch.manual_seed(0)
    H, P, J = 32, 64, 4
    ssm = S5SSM(H, P, n_blocks=J)
    eig = torch.linalg.eigvals(hippo_n(P // J))
    want = eig.imag[eig.imag > 0].sort().values
    lam_re, lam_im = -ssm.log_neg_lambda_re.detach().double().exp(), ssm.lambda_im.detach().double()
    torch.testing.assert_close(lam_re, torch.full((P // 2,), -0.5, dtype=torch.float64), atol=1e-6, rtol=0)
    for block in lam_im.view(J, -1):
        torch.testing.assert_close(block.sort().values, want, atol=1e-4, rtol=1e-6)
    _, V = hippo_n_blocks(P, J)
    B = 2 * (V @ torch.view_as_complex(ssm.B.detach().double().contiguous()).to(V.dtype)).real  # (P, H)
    assert abs(float(B.std()) * P**0.5 - 1.0) < 0.06  # 1/sqrt(H) would be 1.41 here
    assert float(B.abs().max()) * P**0.5 <= 2 / 0.8796 + 1e-3


def test_s5_default_block_is_the_authors_half_glu_with_pre_batchnorm() -> None:
    torch.manual_seed(1)
    model = edifice.build("s5", d_model=8, n_layers=1, d_state=4, d_in=3)
    assert (model.config.block, model.config.norm, model.config.norm_position) == ("half_glu1", "batchnorm", "pre")
    layer = model.layers[0]
    x = torch.randn(4, 6, 3)
    model.train()
    model(x=x)  # one training step moves the running statistics off their (0, 1) start
    bn = layer.mixer_norm
    assert bn.num_batches_tracked == 1 and float(bn.running_var.sub(1).abs().max()) > 0
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        h = model.input_proj(x)
        normed = (h - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias
        g = F.gelu(layer.mixer.ssm(normed))
        want = h + g * torch.sigmoid(layer.mixer.gate_proj(g))  # x + half_glu1(SSM(BN(x))), no final norm
        torch.testing.assert_close(model(x=x), want, atol=TOL, rtol=TOL)


def test_s5_batchnorm_in_eval_keeps_step_equal_to_forward_and_samples_independent() -> None:
    # After training moved the running statistics, eval-mode BatchNorm is a fixed per-channel affine map.
    torch.manual_seed(3)
    model = edifice.build("s5", d_model=8, n_layers=2, d_state=4, d_in=3)
    x = torch.randn(3, 7, 3)
    model.train()
    for _ in range(3):
        model(x=torch.randn(4, 7, 3))
    model.eval()
    with torch.no_grad():
        full = model(x=x)
        state = model.init_state(3)
        stepped = torch.cat(
            [model.step(x[:, :3], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(3, 7)], 1
        )
        alone = model(x=x[1:2])
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone, full[1:2], atol=TOL, rtol=TOL)


@pytest.mark.parametrize("block", ["half_glu2", "full_glu", "gelu", "linear"])
def test_s5_other_blocks_build_and_run(block: str) -> None:
    torch.manual_seed(2)
    model = edifice.build("s5", d_model=8, n_layers=1, d_state=4, d_in=3, block=block, norm="layernorm").eval()
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        y = model(x=x)
        h = model.input_proj(x)
        s = model.layers[0].mixer.ssm(model.layers[0].mixer_norm(h))
        g = F.gelu(s)
        mixer = model.layers[0].mixer
        out = {
            "half_glu2": lambda: s * torch.sigmoid(mixer.gate_proj(g)),
            "full_glu": lambda: mixer.out_proj(g) * torch.sigmoid(mixer.gate_proj(g)),
            "gelu": lambda: g,
            "linear": lambda: mixer.out_proj(g),
        }[block]()
    torch.testing.assert_close(y, h + out, atol=TOL, rtol=TOL)


def test_s5_block_config_errors() -> None:
    with pytest.raises(edifice.ConfigError, match="block"):
        edifice.config("s5", block="glu")
    with pytest.raises(edifice.ConfigError, match="glu"):
        edifice.config("s5", glu=True)
    with pytest.raises(edifice.ConfigError, match="bn_momentum"):
        edifice.config("s5", bn_momentum=0.0)
    assert edifice.config("s5", block="linear", glu=True, norm="batchnorm").glu
