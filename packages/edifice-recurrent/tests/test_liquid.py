"""Tests of ``liquid``: the LTC ODE (Hasani et al. 2021, eq. 1) and its solvers, and the CfC closed form (eq. 10).

The oracles are written from the papers in fp64, one step at a time: the right-hand side of eq. (1) with
``f = σ(γ_r x + γ I + μ)`` (Algorithm 1), the fused step of eq. (3), explicit Euler and classical RK4 with the input
held over each input step, and the CfC cell of Hasani et al. 2022, eq. (10).
"""

from __future__ import annotations

import pytest
import torch

import edifice
from edifice.testing import redraw_parameters, signature
from edifice_recurrent.liquid import CfCCell, Liquid, LiquidLayer, LTCCell

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def build(solver: str, *, seed: int = 0, **overrides: object) -> Liquid:
    torch.manual_seed(seed)
    fields = {"d_model": 6, "n_layers": 2, "d_in": 3, "solver": solver, "integration_steps": 3, **overrides}
    model = edifice.build("liquid", dtype=F64, **fields).eval()
    # Every parameter moved (μ = 0 and the biases included), so the oracles see each of them.
    return redraw_parameters(model, seed=seed)  # type: ignore[return-value]


# -- fp64 oracles from the papers ---------------------------------------------------------------------------------
def ltc_rhs(cell: LTCCell, x: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """Eq. (1): dx/dt = -[1/τ + f(x, I)] x + f(x, I) A with f = σ(γ_r x + γ I + μ)."""
    gamma, mu = cell.input_proj.weight.double(), cell.input_proj.bias.double()
    gamma_r, tau, a = cell.recurrent.weight.double(), cell.log_tau.double().exp(), cell.A.double()
    f = 1.0 / (1.0 + torch.exp(-(x @ gamma_r.T + inp @ gamma.T + mu)))
    return -(1.0 / tau + f) * x + f * a


def ltc_step(cell: LTCCell, x: torch.Tensor, inp: torch.Tensor, solver: str, steps: int, dt: float) -> torch.Tensor:
    """One input step of duration dt (input held) in `steps` unfolds of the named solver."""
    h = dt / steps
    for _ in range(steps):
        if solver == "euler":
            x = x + h * ltc_rhs(cell, x, inp)
        elif solver == "rk4":
            k1 = ltc_rhs(cell, x, inp)
            k2 = ltc_rhs(cell, x + h / 2 * k1, inp)
            k3 = ltc_rhs(cell, x + h / 2 * k2, inp)
            k4 = ltc_rhs(cell, x + h * k3, inp)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        else:  # fused, eq. (3): f from the current state, x implicit
            pre = x @ cell.recurrent.weight.double().T + inp @ cell.input_proj.weight.double().T
            f = 1.0 / (1.0 + torch.exp(-(pre + cell.input_proj.bias.double())))
            tau = cell.log_tau.double().exp()
            x = (x + h * f * cell.A.double()) / (1 + h * (1 / tau + f))
    return x


def cfc_step(cell: CfCCell, x: torch.Tensor, inp: torch.Tensor, dt: float) -> torch.Tensor:
    """Eq. (10): σ(-f t) g + (1 - σ(-f t)) h on a LeCun-tanh backbone of [I; x], g and h through tanh."""
    z = torch.cat([inp, x], -1)
    for layer in cell.backbone:
        z = 1.7159 * torch.tanh(0.666 * (z @ layer.weight.double().T + layer.bias.double()))  # ncps' LeCun tanh

    def head(lin: torch.nn.Linear) -> torch.Tensor:
        return z @ lin.weight.double().T + lin.bias.double()

    gate = 1.0 / (1.0 + torch.exp(head(cell.head_f) * dt))  # σ(-f t)
    return gate * torch.tanh(head(cell.head_g)) + (1 - gate) * torch.tanh(head(cell.head_h))


def oracle(model: Liquid, x: torch.Tensor, *, steps: int | None = None) -> torch.Tensor:
    """The stack of layers, each run step by step from x(0) = 0 with the oracle step above."""
    c = model.config
    h_in = x.double()
    for layer in model.layers:
        state = torch.zeros(x.shape[0], c.d_model, dtype=F64)
        outs = []
        for t in range(x.shape[1]):
            if c.solver == "cfc":
                state = cfc_step(layer.cell, state, h_in[:, t], c.dt)
            else:
                state = ltc_step(layer.cell, state, h_in[:, t], c.solver, steps or c.integration_steps, c.dt)
            outs.append(state)
        h_in = torch.stack(outs, 1)
    return h_in


@signature("liquid")
def test_liquid_integrates_the_ltc_ode_and_the_cfc_closed_form() -> None:
    x = randn(2, 7, 3, seed=1, dtype=F64)
    with torch.no_grad():
        # Each solver of eq. (1) and the CfC cell of eq. (10) against the papers' equations, in fp64.
        for solver in ("fused", "euler", "rk4", "cfc"):
            model = build(solver, dt=0.7)
            torch.testing.assert_close(model(x=x), oracle(model, x), **TIGHT, msg=f"solver={solver}")
        # Convergence to the ODE's solution (a fine RK4 oracle): halving the step divides the error by 2^order.
        x = x[:, :4]
        model = build("rk4", n_layers=1, dt=1.0)
        exact = oracle(model, x, steps=256)  # RK4's error at 256 steps is ~1e-13
        for solver, ratio in (("rk4", 16.0), ("euler", 2.0), ("fused", 2.0)):
            errors = []
            for steps in (4, 8, 16):
                approx = build(solver, n_layers=1, dt=1.0, integration_steps=steps)
                errors.append(float((approx(x=x) - exact).abs().max()))
            ratios = [errors[i] / errors[i + 1] for i in range(len(errors) - 1)]
            assert all(0.75 * ratio < r < 1.4 * ratio for r in ratios), (solver, errors, ratios)


def test_step_reproduces_forward_for_every_solver() -> None:
    x = randn(3, 9, 3, seed=2, dtype=F64)
    for solver in ("fused", "euler", "rk4", "cfc"):
        model = build(solver)
        with torch.no_grad():
            full = model(x=x)
            state = model.init_state(3)
            pieces = [model.step(x[:, :4], state)[0], model.step(x[:, 4:5], state)[0], model.step(x[:, 5:], state)[0]]
        torch.testing.assert_close(torch.cat(pieces, 1), full, **TIGHT, msg=f"solver={solver}")
        assert [s.h.shape for s in state.layers] == [(3, 6), (3, 6)]  # constant-size state


def test_step_gradients_match_forward() -> None:
    torch.manual_seed(3)
    layer = LiquidLayer(4, 5, solver="rk4", integration_steps=2)
    x = randn(2, 6, 4, seed=4)
    cot = randn(2, 6, 5, seed=5)
    full = torch.autograd.grad((layer(x) * cot).sum(), list(layer.parameters()))
    state = layer.init_state(2)
    stepped = torch.cat([layer(x[:, :2], state=state), layer(x[:, 2:], state=state)], 1)
    parts = torch.autograd.grad((stepped * cot).sum(), list(layer.parameters()))
    for a, b in zip(parts, full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("solver", ["fused", "cfc"])
def test_left_and_right_padding_equal_the_sequence_alone(solver: str) -> None:
    model = build(solver)
    x = randn(2, 8, 3, seed=6, dtype=F64)
    mask = torch.tensor([[False] * 3 + [True] * 5, [True] * 6 + [False] * 2])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        torch.testing.assert_close(got[0, 3:], model(x=x[:1, 3:])[0], **TIGHT)
        torch.testing.assert_close(got[1, :6], model(x=x[1:, :6])[0], **TIGHT)
    assert bool((got[0, :3] == 0).all()) and bool((got[1, 6:] == 0).all())


def test_fused_solver_keeps_the_state_within_the_bounds_of_theorem_2() -> None:
    # Theorem 2: x(t) stays in [min(0, A_i), max(0, A_i)]; the fused step keeps it there even for huge steps.
    model = build("fused", n_layers=1, dt=50.0, integration_steps=1)
    x = 10 * randn(4, 20, 3, seed=7, dtype=F64)
    with torch.no_grad():
        h = model(x=x)
    a = model.layers[0].cell.A.double()
    assert bool((h >= torch.clamp(a, max=0) - 1e-12).all()) and bool((h <= torch.clamp(a, min=0) + 1e-12).all())


def test_cfc_gate_interpolates_between_its_heads_with_time() -> None:
    torch.manual_seed(8)
    cell = CfCCell(3, 4, units=8, layers=1).double()
    x, inp = randn(2, 4, seed=9, dtype=F64), randn(2, 3, seed=10, dtype=F64)
    z = 1.7159 * torch.tanh(0.666 * cell.backbone[0](torch.cat([inp, x], -1)))
    g, h, f = torch.tanh(cell.head_g(z)), torch.tanh(cell.head_h(z)), cell.head_f(z)
    with torch.no_grad():
        torch.testing.assert_close(cell.advance(x, inp, dt=0.0), (g + h) / 2, **TIGHT)  # σ(0) = 1/2
        far = cell.advance(x, inp, dt=1e4)
    torch.testing.assert_close(far, torch.where(f > 0, h, g), atol=1e-6, rtol=0)  # σ(-f t) -> 0 or 1


def test_initialisation() -> None:
    model = edifice.build("liquid", d_model=8, d_in=3, tau_init=2.5)
    for layer in model.layers:
        cell = layer.cell
        torch.testing.assert_close(cell.log_tau.exp(), torch.full((8,), 2.5))
        assert bool((cell.input_proj.bias == 0).all())
        assert bool((cell.A.abs() <= 1).all()) and float(cell.A.detach().std()) > 0.2


def test_cfc_defaults_and_initialisation_follow_ncps() -> None:
    # ncps.torch.CfC: 128 backbone units, LeCun tanh 1.7159 tanh(0.666 x), xavier_uniform on every weight matrix.
    config = edifice.config("liquid", solver="cfc")
    assert (config.cfc_backbone_units, config.cfc_backbone_activation) == (128, "lecun_tanh")
    torch.manual_seed(11)
    cell = CfCCell(24, 40, units=128, layers=2)
    for linear in (*cell.backbone, cell.head_f, cell.head_g, cell.head_h):
        fan_out, fan_in = linear.weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        weight = linear.weight.detach()
        assert float(weight.abs().max()) <= bound and float(weight.abs().max()) > 0.95 * bound
        assert abs(float(weight.std()) / (bound / 3**0.5) - 1) < 0.1  # U(-b, b) has std b / sqrt(3)
    with pytest.raises(edifice.ConfigError, match="cfc_backbone_activation"):
        edifice.config("liquid", solver="cfc", cfc_backbone_activation="sine")
    tanh_cell = CfCCell(3, 4, units=8, activation="tanh").double()
    x, inp = randn(2, 4, seed=12, dtype=F64), randn(2, 3, seed=13, dtype=F64)
    z = torch.tanh(tanh_cell.backbone[0](torch.cat([inp, x], -1)))
    with torch.no_grad():
        gate = torch.sigmoid(-tanh_cell.head_f(z))
        want = gate * torch.tanh(tanh_cell.head_g(z)) + (1 - gate) * torch.tanh(tanh_cell.head_h(z))
        torch.testing.assert_close(tanh_cell.advance(x, inp, dt=1.0), want, **TIGHT)


def test_token_inputs_and_pooling() -> None:
    model = edifice.build("liquid", vocab_size=11, d_model=8, output="last").eval()
    ids = torch.randint(0, 11, (2, 5))
    assert model(input_ids=ids).shape == (2, 11)


def test_config_and_input_errors() -> None:
    with pytest.raises(edifice.ConfigError, match="solver"):
        edifice.build("liquid", solver="dopri5")
    with pytest.raises(edifice.ConfigError, match="integration_steps"):
        edifice.build("liquid", integration_steps=0)
    with pytest.raises(edifice.ConfigError, match="dt"):
        edifice.build("liquid", dt=-1.0)
    with pytest.raises(ValueError, match="solver must be one of"):
        LiquidLayer(3, 4, solver="midpoint")
    model = edifice.build("liquid", d_model=8, d_in=3)
    with pytest.raises(edifice.InputError, match=r"liquid: input 'x' expected \[B, T, 3\]"):
        model(x=torch.zeros(2, 5, 4))
    assert edifice.config("liquid", embed_dim=5, hidden_size=7, ode_unfolds=2).d_in == 5
