"""Tests of ``reservoir``: the leaky echo state network (Jaeger 2001; Jaeger et al. 2007) and its ridge readout.

The oracle is written from the update equations as Lukoševičius (2012) states them, in fp64, one step at a time::

    x(n) = (1 - a) x(n-1) + a tanh(W_in [1; u(n)] + W x(n-1))        y(n) = W_out [1; u(n); x(n)]

and the readout fit from eq. (9), ``W_out = Y X^T (X X^T + β I)^{-1}``, solved here by least squares on the
augmented system ``[X^T; √β I] W^T = [Y^T; 0]``.
"""

from __future__ import annotations

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice_recurrent.reservoir import Reservoir, draw_reservoir

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) - 0.5


def build(**overrides: object) -> Reservoir:
    fields = {"d_in": 2, "reservoir_size": 40, "d_out": 3, "leak_rate": 0.6, "sparsity": 0.8, **overrides}
    return edifice.build("reservoir", dtype=F64, **fields).eval()  # type: ignore[return-value]


def esn_oracle(model: Reservoir, u: torch.Tensor) -> torch.Tensor:
    """The leaky ESN from x(0) = 0 and its readout, step by step."""
    c = model.config
    w_in = torch.cat([model.b_in[:, None], model.w_in], 1)  # W_in acting on [1; u(n)]
    x = torch.zeros(u.shape[0], c.reservoir_size, dtype=F64)
    ys = []
    for n in range(u.shape[1]):
        one_u = torch.cat([torch.ones(u.shape[0], 1, dtype=F64), u[:, n]], 1)
        x = (1 - c.leak_rate) * x + c.leak_rate * torch.tanh(one_u @ w_in.T + x @ model.w.T)
        ys.append(torch.cat([u[:, n], x], 1) @ model.readout.weight.T + model.readout.bias)
    return torch.stack(ys, 1)


def nmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(((pred - target) ** 2).mean() / target.var())


@signature("reservoir")
def test_reservoir_is_an_echo_state_network_with_a_closed_form_readout() -> None:
    model = build(spectral_radius=0.8)
    # A fixed sparse random reservoir at exactly the configured spectral radius; only the readout is trained.
    radius = torch.linalg.eigvals(model.w).abs().max()
    torch.testing.assert_close(radius, torch.tensor(0.8, dtype=F64), atol=1e-6, rtol=0)
    assert {n for n, _ in model.named_parameters()} == {"readout.weight", "readout.bias"}
    assert 0.7 < float((model.w == 0).double().mean()) < 0.9  # sparsity 0.8
    # The leaky ESN update (eqs. 2-4), step by step in fp64.
    u = rand(3, 11, 2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x=u), esn_oracle(model, u), **TIGHT)
    # Delayed recall, y(n) = u(n - 4): the reservoir's fading memory makes it linear in the state, so the ridge
    # readout (fitted in closed form, eq. 9) recalls it; without recurrence (spectral radius ~0) it cannot.
    u = rand(1, 500, 1, seed=2)
    y = torch.cat([torch.zeros(1, 4, 1, dtype=F64), u[:, :-4]], 1)
    errors = {}
    for radius in (0.9, 1e-3):
        esn = build(d_in=1, d_out=1, reservoir_size=60, spectral_radius=radius, leak_rate=1.0, input_scaling=0.5)
        esn.fit(u[:, :350], y[:, :350], washout=20)
        with torch.no_grad():
            errors[radius] = nmse(esn(x=u)[:, 370:], y[:, 370:])
    assert errors[0.9] < 0.02 and errors[1e-3] > 0.9, errors


def test_fit_is_ridge_regression_on_the_collected_states() -> None:
    model = build(ridge=1e-3)
    u, y = rand(2, 30, 2, seed=3), rand(2, 30, 3, seed=4)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, :4] = False  # left padding: its steps are not samples
    model.fit(u, y, mask, washout=5)
    with torch.no_grad():
        states = model.states(u, mask=mask)
    used = mask & (mask.long().cumsum(1) - 1 >= 5)
    phi = torch.cat([torch.ones(int(used.sum()), 1, dtype=F64), u[used], states[used]], 1)  # [1; u; x]
    lhs = torch.cat([phi, 1e-3**0.5 * torch.eye(phi.shape[1], dtype=F64)])
    rhs = torch.cat([y[used], torch.zeros(phi.shape[1], 3, dtype=F64)])
    w = torch.linalg.lstsq(lhs, rhs).solution  # (1 + F, d_out)
    torch.testing.assert_close(model.readout.bias, w[0], atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(model.readout.weight, w[1:].T, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("output", ["last", "mean"])
def test_fit_on_pooled_outputs(output: str) -> None:
    model = build(output=output, readout_input=False, ridge=1e-8)
    u = rand(40, 12, 2, seed=5)
    with torch.no_grad():
        feats = model.states(u)
    pooled = feats[:, -1] if output == "last" else feats.mean(1)
    target = pooled @ rand(pooled.shape[1], 3, seed=6) + 0.25  # exactly linear in the pooled state
    model.fit(u, target)
    with torch.no_grad():
        torch.testing.assert_close(model(x=u), target, atol=1e-5, rtol=1e-5)


def test_step_reproduces_forward_and_padding_is_exact() -> None:
    model = build()
    u = rand(2, 9, 2, seed=7)
    with torch.no_grad():
        full = model(x=u)
        state = model.init_state(2)
        pieces = [model.step(u[:, :4], state)[0], model.step(u[:, 4:5], state)[0], model.step(u[:, 5:], state)[0]]
        torch.testing.assert_close(torch.cat(pieces, 1), full, **TIGHT)
        assert state.h.shape == (2, 40)
        mask = torch.tensor([[False] * 3 + [True] * 6, [True] * 7 + [False] * 2])
        padded = model(x=u, attention_mask=mask)
        torch.testing.assert_close(padded[0, 3:], model(x=u[:1, 3:])[0], **TIGHT)
        torch.testing.assert_close(padded[1, :7], model(x=u[1:, :7])[0], **TIGHT)
        assert bool((padded[0, :3] == 0).all())


def test_reservoir_is_drawn_from_its_seed_only() -> None:
    torch.manual_seed(123)
    a = build(seed=3)
    torch.manual_seed(456)
    b, c = build(seed=3), build(seed=4)
    assert torch.equal(a.w, b.w) and torch.equal(a.w_in, b.w_in) and not torch.equal(a.w, c.w)
    w_in, bias, w = draw_reservoir(
        3, 20, spectral_radius=1.2, input_scaling=0.3, bias_scaling=0.1, sparsity=0.0, seed=0
    )
    assert float(w_in.abs().max()) <= 0.3 and float(bias.abs().max()) <= 0.1 and bool((w != 0).all())
    torch.testing.assert_close(torch.linalg.eigvals(w).abs().max(), torch.tensor(1.2, dtype=F64), **TIGHT)
    with pytest.raises(ValueError, match="spectral radius 0"):
        draw_reservoir(1, 1, spectral_radius=1.0, input_scaling=1.0, bias_scaling=1.0, sparsity=0.999999, seed=0)


def test_only_the_readout_learns_by_gradients() -> None:
    model = edifice.build("reservoir", d_in=2, reservoir_size=16, d_out=1)
    model(x=torch.randn(2, 5, 2)).sum().backward()
    assert all(p.grad is not None and bool(p.grad.ne(0).any()) for p in model.parameters())
    assert not any(b.requires_grad for b in model.buffers())


def test_config_fit_and_input_errors() -> None:
    for bad, match in (
        ({"sparsity": 1.0}, "sparsity"),
        ({"leak_rate": 0.0}, "leak_rate"),
        ({"leak_rate": 1.5}, "leak_rate"),
        ({"spectral_radius": 0.0}, "spectral_radius"),
        ({"output": "first"}, "output"),
    ):
        with pytest.raises(edifice.ConfigError, match=match):
            edifice.build("reservoir", **bad)
    model = build()
    with pytest.raises(ValueError, match=r"fit expected targets y of shape \[2, 6, 3\]"):
        model.fit(rand(2, 6, 2, seed=8), rand(2, 6, 1, seed=9))
    with pytest.raises(ValueError, match="no samples left"):
        model.fit(rand(2, 6, 2, seed=8), rand(2, 6, 3, seed=9), washout=6)
    with pytest.raises(edifice.InputError, match=r"reservoir: input 'x' expected \[B, T, 2\]"):
        model(x=rand(2, 6, 3, seed=10))
    assert edifice.config("reservoir", input_size=4, output_size=2, hidden_size=30).reservoir_size == 30
