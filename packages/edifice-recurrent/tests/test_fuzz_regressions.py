"""Regressions the registry-wide fuzzer (tests/test_fuzz.py) found in edifice-recurrent configs and models."""

from __future__ import annotations

import pytest
import torch

import edifice


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_liquid_explicit_solver_refuses_an_unstable_time_constant(solver: str) -> None:
    # tau_init=1e-6 with an explicit solver diverged to inf in the first unfold (h (1/tau + 1) far outside the
    # stability interval); the fused solver is stable for any step.
    tiny = {**edifice.get_spec("liquid").tiny, "solver": solver, "integration_steps": 4}
    with pytest.raises(edifice.ConfigError, match=r"field 'tau_init'=1e-06 is too small for the explicit"):
        edifice.config("liquid", **tiny, tau_init=1e-6)
    edifice.config("liquid", **{**tiny, "solver": "fused"}, tau_init=1e-6)


@pytest.mark.parametrize("name", ["snn", "ann2snn"])
def test_bernoulli_example_inputs_are_probabilities(name: str) -> None:
    # The spec's x domain is [0, 1] under Bernoulli encoding only, so example inputs are valid spike probabilities.
    model = edifice.build(name, **edifice.get_spec(name).tiny, encoding="bernoulli")
    x = edifice.example_inputs(model, 3)["x"]
    assert x.min() >= 0 and x.max() <= 1
    with pytest.raises(edifice.InputError, match=r"input 'x' expected values in \[0, 1\]"):
        model(x=x + 2)


def test_ttt_e2e_takes_int32_token_ids() -> None:
    model = edifice.build("ttt_e2e", **edifice.get_spec("ttt_e2e").tiny).eval()
    ids = edifice.example_inputs(model, 2)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids.int()), model(input_ids=ids))


@pytest.mark.parametrize(("name", "overrides"), [("ttt", {"d_model": 6}), ("ttt_e2e", {"d_model": 18})])
def test_odd_head_size_error_names_d_model(name: str, overrides: dict[str, int]) -> None:
    with pytest.raises(edifice.ConfigError, match=r"field 'head_dim'=None gives \d+ \(of d_model="):
        edifice.config(name, **{**edifice.get_spec(name).tiny, **overrides})


def test_xlstm_width_error_names_d_model() -> None:
    with pytest.raises(edifice.ConfigError, match=r"field 'qk_dim_factor'=0\.5 gives width 23 \(of d_model=47\)"):
        edifice.config("mlstm", **{**edifice.get_spec("mlstm").tiny, "d_model": 47})


def test_huginn_rope_base_must_exceed_one() -> None:
    with pytest.raises(edifice.ConfigError, match=r"field 'rope_base'=1\.0 must be > 1"):
        edifice.config("huginn", **edifice.get_spec("huginn").tiny, rope_base=1.0)
