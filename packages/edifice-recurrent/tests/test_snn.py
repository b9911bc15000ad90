"""Tests of ``snn``: the LIF recurrence of Neftci, Mostafa & Zenke (2019) and its surrogate gradient.

The oracle below is written from the paper's discrete-time LIF network (§III), in fp64, one step at a time::

    S[n] = Θ(U[n] - ϑ)    I[n+1] = α I[n] + W S_in[n] + V S[n]    U[n+1] = β U[n] + I[n] - ϑ S[n]

Its spikes carry the surrogate gradient by a different mechanism than the model's autograd function: the
"straight-through" sum ``Θ(u) + σ(u) - stop_gradient(σ(u))`` with ``σ`` the surrogate's antiderivative (the fast
sigmoid ``u / (1 + k|u|)``, or the logistic ``s(ku)``), whose value is exactly ``Θ(u)`` and whose derivative is
exactly ``σ'(u)``.
"""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice_recurrent._spiking import SurrogateSpike, encode, spike, surrogate_derivative
from edifice_recurrent.snn import SNN, LIFLayer

F64 = torch.float64

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def oracle_spike(u: torch.Tensor, kind: str, k: float) -> torch.Tensor:
    """Θ(u) in value, the surrogate σ'(u) in gradient, through the antiderivative σ (not SurrogateSpike)."""
    anti = u / (1 + k * u.abs()) if kind == "fast_sigmoid" else torch.sigmoid(k * u)
    return (u >= 0).to(u.dtype) + (anti - anti.detach())


def lif_oracle(model: SNN, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every layer's spikes [B, T, n] and the output rates, from the paper's recurrence in fp64."""
    c = model.config
    beta = math.exp(-1 / c.tau)
    alpha = math.exp(-1 / c.tau_syn) if c.tau_syn > 0 else 0.0
    theta = c.threshold
    inputs = [x.double()] * c.num_timesteps  # constant-current coding: S_in[n] = x
    trains = []
    for layer in model.layers:
        w = layer.fc.weight.double()
        b = 0.0 if layer.fc.bias is None else layer.fc.bias.double()
        v = None if layer.rec is None else layer.rec.weight.double()
        current = torch.zeros(x.shape[0], w.shape[0], dtype=F64)
        potential = torch.zeros_like(current)
        out = []
        for n in range(c.num_timesteps):
            s = oracle_spike(potential - theta, c.surrogate, c.surrogate_slope)
            out.append(s)
            fired = s.detach() if c.detach_reset else s
            next_current = alpha * current + inputs[n] @ w.T + b + (0.0 if v is None else s @ v.T)
            if c.reset == "subtract":
                potential = beta * potential + current - theta * fired
            else:
                potential = beta * potential * (1 - fired) + current
            current = next_current
        inputs = out
        trains.append(torch.stack(out, 1))
    return trains, trains[-1].mean(1)


CONFIGS = (
    {},
    {"recurrent": True, "reset": "zero", "tau_syn": 0.0, "surrogate": "sigmoid", "bias": True, "threshold": 0.7},
    {"detach_reset": True, "tau": 4.0, "hidden_sizes": (9, 7)},
)


@signature("snn")
def test_snn_matches_the_lif_recurrence_and_its_surrogate_gradient() -> None:
    for i, overrides in enumerate(CONFIGS):
        torch.manual_seed(i)
        fields = {"d_in": 5, "hidden_sizes": (12,), "d_out": 4, "num_timesteps": 20, **overrides}
        model = edifice.build("snn", dtype=F64, **fields)
        x = 2 * randn(3, 5, seed=10 + i)
        record = model.simulate(x)
        trains, rates = lif_oracle(model, x)
        for got, want in zip(record.spikes, trains, strict=True):
            assert set(got.unique().tolist()) == {0.0, 1.0}, overrides  # binary, and both occur
            assert torch.equal(got, want.detach()), overrides  # the very same spikes
        # The gradient through every spike is exactly the surrogate's (oracle: a different mechanism).
        cotangent = randn(*rates.shape, seed=20 + i)
        params = list(model.parameters())
        got_grads = torch.autograd.grad((model(x) * cotangent).sum(), params)
        want_grads = torch.autograd.grad((rates * cotangent).sum(), params)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
        assert all(bool(g.ne(0).any()) for g in got_grads), overrides


@pytest.mark.parametrize("kind", ["fast_sigmoid", "sigmoid"])
def test_spike_is_heaviside_forward_and_the_surrogate_backward(kind: str) -> None:
    u = torch.linspace(-2, 2, 41, dtype=F64).requires_grad_()
    s = spike(u, kind, 5.0)
    assert torch.equal(s, (u >= 0).double())  # Θ(0) = 1
    (grad,) = torch.autograd.grad(s.sum(), u)
    expected = 1 / (1 + 5 * u.detach().abs()) ** 2 if kind == "fast_sigmoid" else None
    if expected is None:
        sig = torch.sigmoid(5 * u.detach())
        expected = 5 * sig * (1 - sig)
    torch.testing.assert_close(grad, expected, atol=0, rtol=0)
    torch.testing.assert_close(surrogate_derivative(u.detach(), kind, 5.0), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="kind must be"):
        surrogate_derivative(u, "arctan", 1.0)
    assert SurrogateSpike.apply(torch.zeros(1), kind, 1.0).item() == 1.0


def test_gradients_flow_through_silent_neurons() -> None:
    # No neuron ever reaches threshold, so the true derivative of every spike is zero; the surrogate is not.
    torch.manual_seed(0)
    model = edifice.build("snn", d_in=4, hidden_sizes=(6,), d_out=3, num_timesteps=10)
    x = 1e-3 * torch.randn(2, 4)
    record = model.simulate(x)
    assert all(float(s.detach().sum()) == 0 for s in record.spikes)
    rates = model(x)
    (grad,) = torch.autograd.grad(rates.sum(), [model.layers[0].fc.weight])
    assert float(grad.abs().sum()) > 0


def test_rates_are_spike_counts_over_steps() -> None:
    torch.manual_seed(1)
    model = edifice.build("snn", d_in=4, hidden_sizes=(8,), d_out=5, num_timesteps=16)
    with torch.no_grad():
        rates = model(3 * torch.randn(6, 4))
    counts = rates * 16
    assert torch.equal(counts, counts.round()) and float(rates.max()) <= 1 and float(rates.min()) >= 0


def test_membrane_decays_by_beta_and_integrates_the_current() -> None:
    # One neuron, one input of weight 1 and a constant sub-threshold current c: U[n] = c (1 - β^(n-1)) / (1 - β) for
    # n >= 1 without a synaptic filter (α = 0: I[n] = c from n = 1 on).
    layer = LIFLayer(1, 1, tau=3.0, tau_syn=0.0, threshold=10.0).double()
    with torch.no_grad():
        layer.fc.weight.fill_(1.0)
    c, beta = 0.2, math.exp(-1 / 3)
    _, potentials = layer(torch.full((12, 1, 1), c, dtype=F64))
    n = torch.arange(12, dtype=F64)
    expected = torch.where(n >= 1, c * (1 - beta ** (n - 1).clamp(min=0)) / (1 - beta), 0.0)
    torch.testing.assert_close(potentials[:, 0, 0], expected, atol=1e-12, rtol=1e-12)


def test_bernoulli_encoding_is_seeded_and_checks_its_domain() -> None:
    torch.manual_seed(2)
    model = edifice.build("snn", d_in=6, hidden_sizes=(8,), d_out=3, num_timesteps=12, encoding="bernoulli")
    x = torch.rand(4, 6)

    def run(seed: int) -> torch.Tensor:
        return model.simulate(x, generator=torch.Generator().manual_seed(seed)).spikes[0]

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    drawn = encode(x, 4000, "bernoulli", name="snn", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(drawn.mean(0), x, atol=0.03, rtol=0)  # spike probability = x
    with pytest.raises(edifice.InputError, match=r"snn: input 'x' expected values in \[0, 1\]"):
        model(torch.full((1, 6), 1.5))


def test_config_and_input_errors() -> None:
    for bad, match in (({"tau": 0.0}, "tau"), ({"reset": "soft"}, "reset"), ({"hidden_sizes": (4, 0)}, "hidden_sizes")):
        with pytest.raises(edifice.ConfigError, match=match):
            edifice.build("snn", **bad)
    with pytest.raises(edifice.ConfigError, match="surrogate"):
        edifice.build("snn", surrogate="arctan")
    with pytest.raises(ValueError, match="reset must be"):
        LIFLayer(2, 2, tau=1.0, tau_syn=0.0, threshold=1.0, reset="soft")
    model = edifice.build("snn", input_size=5, output_size=2)
    assert model.config.d_in == 5 and model.config.d_out == 2
    with pytest.raises(edifice.InputError, match=r"snn: input 'x' expected \[B, 5\]"):
        model(torch.zeros(2, 3, 5))


def test_gradient_checkpointing_gives_identical_gradients() -> None:
    torch.manual_seed(4)
    model = edifice.build("snn", d_in=4, hidden_sizes=(8, 8), d_out=3, num_timesteps=12, recurrent=True).train()
    x = 2 * torch.randn(3, 4)
    plain = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    model.set_grad_checkpointing(True)
    again = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    for a, b in zip(plain, again, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
