"""Longhorn: the mixer against an fp64 loop of the paper's update, and the update against the online-recall objective.

The oracle is written from Liu et al. (2025), §3, and matches the official decoding step
(github.com/Cranial-XIX/longhorn, ``Longhorn.step``): ``β = σ(W_β δ + b)``, ``ε = β / (1 + β kᵀk)``,
``S_t = (1 - ε ⊗ k²) ⊙ S_{t-1} + (ε ⊙ x) ⊗ k``, ``y = S q + D x``, gated by ``SiLU(z)``, one position at a time.
The property tests check the update against the per-step objective
``L_t(S) = ||S - S_{t-1}||_F² + Σ_e β_e (S_e · k_t - x_e)²`` it is derived from.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import signature
from edifice.testing.tol import SCAN, Tolerance, assert_close, compare
from edifice_ssm.longhorn import Longhorn, LonghornMixer, longhorn_coefficients, longhorn_scan

TOL = Tolerance(atol=1e-5, rtol=1e-4)  # fp32 against the fp64 oracle
TINY = {"d_model": 16, "n_layers": 2, "d_state": 4, "d_conv": 3, "d_in": 5}

compare(torch.zeros(1), torch.ones(1))  # pay the first failing comparison's torch._refs import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def random_mixer(seed: int = 0) -> LonghornMixer:
    torch.manual_seed(seed)
    mixer = LonghornMixer(8, d_state=3, expand=2, d_conv=3, dt_rank=2, bias=True)
    with torch.no_grad():
        mixer.beta_proj.bias.normal_(0.0, 1.0)
        mixer.D.normal_()
        mixer.in_proj.bias.normal_(0.0, 0.3)
        mixer.out_proj.bias.normal_(0.0, 0.3)
    return mixer


def paper_oracle(mixer: LonghornMixer, u: torch.Tensor) -> torch.Tensor:
    """The Longhorn block in fp64, one position at a time: ``u [B, T, d_model] -> [B, T, d_model]``."""
    u = u.double()
    E, N, R, K = mixer.d_inner, mixer.d_state, mixer.dt_rank, mixer.d_conv
    xz = u @ mixer.in_proj.weight.double().T + mixer.in_proj.bias.double()
    x, z = xz[..., :E], xz[..., E:]
    w, b = mixer.conv1d.weight.double(), mixer.conv1d.bias.double()  # (E, K): w[:, -1] meets the current input
    S = torch.zeros(u.shape[0], E, N, dtype=torch.float64)
    outs = []
    for t in range(u.shape[1]):
        conv = b.expand(u.shape[0], E).clone()
        for j in range(K):
            if t - K + 1 + j >= 0:
                conv = conv + w[:, j] * x[:, t - K + 1 + j]
        xt = F.silu(conv)  # (B, E): the values
        proj = xt @ mixer.x_proj.weight.double().T
        delta, k, q = proj[:, :R], proj[:, R : R + N], proj[:, R + N :]
        beta = torch.sigmoid(delta @ mixer.beta_proj.weight.double().T + mixer.beta_proj.bias.double())  # (B, E)
        eps = beta / (1 + beta * (k**2).sum(-1, keepdim=True))  # ε_t = β_t / (1 + β_t k_tᵀk_t)
        S = (1 - eps[:, :, None] * k[:, None, :] ** 2) * S + (eps * xt)[:, :, None] * k[:, None, :]
        y = (S * q[:, None, :]).sum(-1) + mixer.D.double() * xt  # y_t = S_t q_t + D x_t
        outs.append((y * F.silu(z[:, t])) @ mixer.out_proj.weight.double().T + mixer.out_proj.bias.double())
    return torch.stack(outs, 1)


@signature("longhorn")
def test_mixer_matches_the_paper_update_in_parallel_and_step_by_step() -> None:
    mixer = random_mixer()
    u = randn(2, 17, 8, seed=1)
    want = paper_oracle(mixer, u)
    with torch.no_grad():
        assert_close(mixer(u), want, TOL, name="parallel scan")
        state = mixer.init_state(2)
        stepped = torch.cat(
            [mixer(u[:, :6], state=state), mixer(u[:, 6:7], state=state), mixer(u[:, 7:], state=state)], 1
        )
    assert_close(stepped, want, TOL, name="prefill + step + chunk")
    assert state.ssm.shape == (2, 16, 3) and state.ssm.dtype == torch.float32


def _objective_gradient(S: torch.Tensor, S_prev: torch.Tensor, x: torch.Tensor, beta: torch.Tensor, k: torch.Tensor):
    """∇_S of ``||S - S_prev||² + Σ_e β_e (S_e·k - x_e)²`` at ``S`` (autograd, fp64): ``[B, E, N]``."""
    S = S.double().detach().requires_grad_(True)
    residual = (S * k.double()[:, None, :]).sum(-1) - x.double()  # (B, E)
    loss = (S - S_prev.double()).square().sum() + (beta.double() * residual.square()).sum()
    (grad,) = torch.autograd.grad(loss, S)
    return grad


@signature("longhorn")
def test_update_is_the_minimiser_of_the_online_recall_objective_for_axis_aligned_keys() -> None:
    # For a key along one axis k k^T is diagonal, so Longhorn's update is the exact implicit step: ∇L_t(S_t) = 0.
    B, T, E, N = 2, 12, 5, 4
    x, beta = randn(B, T, E, seed=2), torch.sigmoid(randn(B, T, E, seed=3)) * 3
    axis = torch.randint(0, N, (B, T), generator=torch.Generator().manual_seed(4))
    k = F.one_hot(axis, N).float() * randn(B, T, 1, seed=5)  # (B, T, N): one non-zero entry
    S0 = randn(B, E, N, seed=6)
    states = longhorn_scan(x, beta, k, S0)  # (B, T, E, N) through ops.linear_recurrence
    previous = torch.cat([S0.unsqueeze(1), states[:, :-1]], 1)
    for t in range(T):
        grad = _objective_gradient(states[:, t], previous[:, t], x[:, t], beta[:, t], k[:, t])
        assert grad.abs().max() < 1e-5, (
            f"step {t}: the Longhorn update is not a stationary point (|∇| = {grad.abs().max():.2e})"
        )


def test_update_is_the_implicit_step_with_the_transition_diagonalised_for_any_key() -> None:
    # Exact minimiser (Sherman–Morrison): S* = S - ε (S k - x) k^T. Longhorn keeps only diag(k k^T) in the transition:
    # S_t - S*_t = ε ⊙ (offdiag(k k^T) S_{t-1}); from a zero state the first step is the exact minimiser.
    B, E, N = 3, 4, 5
    x, beta = randn(B, 1, E, seed=7), torch.sigmoid(randn(B, 1, E, seed=8))
    k = randn(B, 1, N, seed=9)
    S_prev = randn(B, E, N, seed=10)
    S = longhorn_scan(x, beta, k, S_prev)[:, 0].double()
    eps = (beta / (1 + beta * k.square().sum(-1, keepdim=True)))[:, 0].double()  # (B, E)
    kk = k[:, 0, :, None].double() * k[:, 0, None, :].double()  # (B, N, N)
    residual = (S_prev.double() @ k[:, 0, :, None].double()).squeeze(-1) - x[:, 0].double()  # (B, E)
    exact = S_prev.double() - eps[..., None] * residual[..., None] * k[:, 0, None, :].double()
    off_diagonal = kk - torch.diag_embed(torch.diagonal(kk, dim1=-2, dim2=-1))
    assert_close(S - exact, eps[..., None] * (S_prev.double() @ off_diagonal), Tolerance(atol=1e-5, rtol=1e-4))
    first = longhorn_scan(x, beta, k)[:, 0]  # from S = 0
    grad = _objective_gradient(first, torch.zeros_like(first), x[:, 0], beta[:, 0], k[:, 0])
    assert grad.abs().max() < 1e-5


def test_the_forget_gate_comes_from_the_key_alone() -> None:
    # No separate decay parameter: a step with k = 0 (or β = 0) leaves the state exactly as it was.
    x, beta = randn(1, 3, 4, seed=11), torch.rand(1, 3, 4, generator=torch.Generator().manual_seed(12))
    k = randn(1, 3, 2, seed=13)
    k[:, 1] = 0.0
    S = longhorn_scan(x, beta, k)
    assert torch.equal(S[:, 1], S[:, 0])
    a, b = longhorn_coefficients(x, torch.zeros_like(beta), k)
    assert torch.equal(a, torch.ones_like(a)) and torch.equal(b, torch.zeros_like(b))
    assert ((a >= 0) & (a <= 1)).all()
    assert not any("A_log" in n for n, _ in LonghornMixer(8).named_parameters())


def _build(seed: int = 0, **overrides: object) -> Longhorn:
    torch.manual_seed(seed)
    model = edifice.build("longhorn", **{**TINY, **overrides})
    assert isinstance(model, Longhorn)
    return model


def test_model_step_reproduces_forward_and_left_padding_is_exact() -> None:
    model = _build(seed=14).eval()
    x = randn(2, 11, TINY["d_in"], seed=15)
    mask = torch.tensor([[False] * 3 + [True] * 8, [True] * 11])
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2)
        pieces = [model.step(x[:, a:b], state)[0] for a, b in ((0, 4), (4, 5), (5, 6), (6, 11))]
        padded = model(x=x, attention_mask=mask)
        alone = model(x=x[:1, 3:])
    assert_close(torch.cat(pieces, 1), want, SCAN, name="step")
    assert_close(padded[0, 3:], alone[0], SCAN, name="left padding")


def test_initialisation_follows_the_official_code() -> None:
    model = _build(seed=16, d_model=32, n_layers=4, expand=2)
    for layer in model.layers:
        mixer = layer.mixer
        assert torch.equal(mixer.D, torch.ones_like(mixer.D))
        assert torch.equal(mixer.beta_proj.bias, torch.zeros_like(mixer.beta_proj.bias))  # β ≈ σ(W_β δ) at init
        bound = 1 / math.sqrt(mixer.d_inner) / math.sqrt(4)  # default Linear bound, divided by sqrt(n_layers)
        w = mixer.out_proj.weight
        assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.9 * bound


def test_config_accepts_the_original_options_and_rejects_bad_ones() -> None:
    config = edifice.config("longhorn", state_size=8, expand_factor=3, conv_size=2, hidden_size=40, num_layers=1)
    assert (config.d_state, config.expand, config.d_conv, config.d_model, config.n_layers) == (8, 3, 2, 40, 1)
    assert config.beta_rank == 3 and config.d_inner == 120
    with pytest.raises(edifice.ConfigError, match="norm"):
        edifice.config("longhorn", norm="batchnorm")
    with pytest.raises(edifice.ConfigError, match="d_conv"):
        edifice.config("longhorn", d_conv=0)
    with pytest.raises(ValueError, match="d_state"):
        LonghornMixer(8, d_state=0)
    assert edifice.blocks.get("longhorn") is LonghornMixer
