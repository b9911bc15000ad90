"""Tests of ``ann2snn``: Diehl et al.'s (2015) conversion of a ReLU network to integrate-and-fire neurons.

The oracles are written from the paper: the data-based normalisation (each layer's scale is the larger of its
maximum weight and its maximum ReLU activation on the calibration data; weights rescaled by
``λ_{l-1} / λ_l``), the model-based one (the largest possible positive input of a layer), and the time-stepped IF
simulation of the authors' code -- per step, every layer in turn: ``mem += W' s``, spike where ``mem >= V_thr``,
reset those to zero -- in fp64.
"""

from __future__ import annotations

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice_recurrent.ann2snn import ANN2SNN

F64 = torch.float64

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def converted(num_timesteps: int, *, reset: str = "zero", seed: int = 0, **overrides: object) -> ANN2SNN:
    """A constructed ReLU network (positive output biases so that every output is active), prepared on data."""
    torch.manual_seed(seed)
    fields = {"d_in": 6, "hidden_sizes": (24,), "d_out": 3, "bias": True, **overrides}
    model = edifice.build("ann2snn", dtype=F64, num_timesteps=num_timesteps, reset=reset, **fields)
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.uniform_(0.05, 0.3)
    return model.prepare(rand(512, 6, seed=1))  # type: ignore[return-value]


@torch.no_grad()
def data_scales(model: ANN2SNN, x: torch.Tensor) -> list[float]:
    """The paper's data-based normalisation: λ_l = max(max weight of layer l, max activation of layer l)."""
    scales, h = [], x
    for layer in model.layers:
        h = torch.relu(h @ layer.weight.T + layer.bias)
        scales.append(max(float(layer.weight.max().clamp(min=0)), float(h.max())))
    return scales


def if_oracle(model: ANN2SNN, x: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """Spike counts of the output layer: the authors' simulation loop, time-major, reset to zero, V_thr = 1."""
    weights, prev = [], 1.0
    for layer, lam in zip(model.layers, scales, strict=True):
        weights.append((layer.weight.detach() * prev / lam, layer.bias.detach() / lam))
        prev = lam
    mem = [torch.zeros(x.shape[0], w.shape[0], dtype=F64) for w, _ in weights]
    counts = torch.zeros(x.shape[0], weights[-1][0].shape[0], dtype=F64)
    for _ in range(model.config.num_timesteps):
        s = x
        for i, (w, b) in enumerate(weights):
            mem[i] = mem[i] + s @ w.T + b
            s = (mem[i] >= 1.0).to(F64)
            mem[i] = torch.where(s > 0, 0.0, mem[i])
        counts += s
    return counts


def relative_error(model: ANN2SNN, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = model.ann(x)
        return float((model(x) - want).norm() / want.norm())


@signature("ann2snn")
def test_ann2snn_converges_to_the_relu_network_as_steps_grow() -> None:
    x = rand(64, 6, seed=2)
    # The conversion itself: the paper's normalisation and the authors' IF simulation, spike for spike.
    model = converted(32)
    scales = data_scales(model, rand(512, 6, seed=1))
    torch.testing.assert_close(model.scales, torch.tensor(scales, dtype=F64), atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        counts = model.simulate(x).spikes[-1].sum(1)
        assert torch.equal(counts, if_oracle(model, x, scales))
        # The output is the rate times the output scale: a multiple of λ_L / T, not a real-valued activation.
        steps = model(x) / model.scales[-1] * 32
        torch.testing.assert_close(steps, steps.round(), atol=1e-9, rtol=0)
        assert float(steps.max()) > 0
    # Rate coding converges: with reset by subtraction the error falls like 1/T (×4 per ×4 steps) ...
    errors = [relative_error(converted(t, reset="subtract"), x) for t in (8, 32, 128)]
    assert errors[0] > 2.5 * errors[1] > 6.25 * errors[2] > 0, errors
    # ... and with the paper's reset to zero it falls monotonically (to the residual of the discarded charge).
    errors = [relative_error(converted(t, reset="zero"), x) for t in (8, 32, 128)]
    assert errors[0] > errors[1] > errors[2] > 0, errors


def test_classification_agrees_with_the_relu_network() -> None:
    # The paper's metric: the class with the most output spikes is the ReLU network's argmax.
    model, x = converted(128, seed=3, d_out=4), rand(200, 6, seed=4)
    with torch.no_grad():
        agree = (model(x).argmax(-1) == model.ann(x).argmax(-1)).double().mean()
    assert float(agree) >= 0.9


def test_normalised_activations_peak_at_one_on_the_calibration_data() -> None:
    torch.manual_seed(5)
    model = edifice.build("ann2snn", d_in=5, hidden_sizes=(16, 8), d_out=3, dtype=F64)
    calib = rand(300, 5, seed=6)
    model.prepare(calib)
    with torch.no_grad():
        for act, lam, layer in zip(model.activations(calib), model.scales, model.layers, strict=True):
            assert float(act.max() / lam) <= 1 + 1e-12
            assert float(lam) in (float(act.max()), float(layer.weight.max()))
    # A percentile below 100 gives smaller scales (Rueckauer et al.'s robust normalisation).
    robust = edifice.build("ann2snn", d_in=5, hidden_sizes=(16, 8), d_out=3, dtype=F64, percentile=50.0)
    robust.load_state_dict(model.state_dict())
    robust.prepare(calib)
    assert bool((robust.scales <= model.scales).all()) and bool((robust.scales < model.scales).any())


def test_model_based_normalisation_bounds_the_input_of_every_layer() -> None:
    torch.manual_seed(7)
    model = edifice.build("ann2snn", d_in=5, hidden_sizes=(9,), d_out=3, normalization="model", dtype=F64)
    model.prepare()
    expected, prev = [], 1.0
    for layer in model.layers:
        prev *= float(layer.weight.detach().clamp(min=0).sum(1).max())
        expected.append(prev)
    torch.testing.assert_close(model.scales, torch.tensor(expected, dtype=F64), atol=1e-12, rtol=1e-12)
    for w, _ in model.snn_parameters():  # at most one spike's worth of input per step
        assert float(w.detach().clamp(min=0).sum(1).max()) <= 1 + 1e-12


def test_threshold_scales_the_rates_not_the_estimate() -> None:
    x = rand(16, 6, seed=8)
    base, high = converted(256, reset="subtract"), converted(256, reset="subtract", threshold=2.0)
    with torch.no_grad():
        assert float(high.simulate(x).spikes[-1].mean()) < float(base.simulate(x).spikes[-1].mean())
        torch.testing.assert_close(high(x), base(x), atol=0.05, rtol=0.1)


def test_gradients_reach_the_relu_weights_through_the_spikes() -> None:
    model = converted(16).float()
    x = rand(4, 6, seed=9).float()
    model(x).sum().backward()
    assert all(p.grad is not None and bool(p.grad.ne(0).any()) for p in model.parameters())


def test_bernoulli_rate_coding_is_seeded() -> None:
    model = converted(64, encoding="bernoulli")
    x = rand(8, 6, seed=10)

    def run(seed: int) -> torch.Tensor:
        with torch.no_grad():
            return model(x, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    with pytest.raises(edifice.InputError, match=r"ann2snn: input 'x' expected values in \[0, 1\]"):
        model(x - 1)


def test_prepare_is_required_and_errors_are_clear() -> None:
    model = edifice.build("ann2snn", d_in=4, hidden_sizes=(8,), d_out=2)
    with pytest.raises(RuntimeError, match=r"call model\.prepare"):
        model(torch.rand(2, 4))
    with pytest.raises(ValueError, match="needs calibration inputs"):
        model.prepare()
    with pytest.raises(edifice.InputError, match=r"ann2snn: input 'x' expected \[B, 4\]"):
        model.prepare(torch.rand(2, 5))
    model.prepare(torch.rand(10, 4))
    model.reset_parameters()
    assert not bool(model.fitted)
    for bad, match in (({"percentile": 0.0}, "percentile"), ({"normalization": "max"}, "normalization")):
        with pytest.raises(edifice.ConfigError, match=match):
            edifice.build("ann2snn", **bad)
    with pytest.raises(edifice.ConfigError, match="reset"):
        edifice.build("ann2snn", reset="soft")


def test_gradient_checkpointing_gives_identical_gradients() -> None:
    model = converted(16, hidden_sizes=(12, 10)).float().train()
    x = rand(4, 6, seed=11).float()
    plain = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    model.set_grad_checkpointing(True)
    again = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    for a, b in zip(plain, again, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
