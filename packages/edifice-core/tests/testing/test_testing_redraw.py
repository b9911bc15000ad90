"""``redraw_parameters``: every parameter moves, by rule, reproducibly, except those kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edifice.testing import redraw_parameters


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Conv1d(16, 16, 3, groups=16))
    with torch.no_grad():
        model[0].bias.zero_()
    return model


def test_every_parameter_moves_and_norm_gains_stay_positive() -> None:
    model = _model()
    before = {name: p.clone() for name, p in model.named_parameters()}
    redraw_parameters(model, seed=3)
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), name
    gain = model[1].weight.detach()
    assert bool((gain >= 0.5).all() and (gain <= 1.5).all()) and gain.std() > 0.1
    assert 0.1 < float(model[0].bias.detach().std()) < 0.6  # zero bias + N(0, 0.3^2)
    assert 0.2 < float((model[2].weight - before["2.weight"]).detach().std()) < 1.0  # fan-in 3: N(0, 1/3)


def test_seeded_kept_and_tied_parameters() -> None:
    a, b = redraw_parameters(_model(), seed=1), redraw_parameters(_model(), seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    model = _model()
    kept = model[0].weight.clone()
    redraw_parameters(model, keep=("0.weight",))
    assert torch.equal(model[0].weight, kept)
    tied = nn.Module()
    tied.a = nn.Linear(4, 4, bias=False)
    tied.b = nn.Linear(4, 4, bias=False)
    tied.b.weight = tied.a.weight
    start = tied.a.weight.clone()
    redraw_parameters(tied)
    assert tied.b.weight is tied.a.weight and not torch.equal(tied.a.weight, start)


def test_complex_parameters_are_refused() -> None:
    module = nn.Module()
    module.lam = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="lam"):
        redraw_parameters(module)
