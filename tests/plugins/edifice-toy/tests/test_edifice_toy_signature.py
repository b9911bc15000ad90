"""The signature test of ``toy_mixer``: its output equals the SwiGLU formula computed from its weights."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import signature

if importlib.util.find_spec("edifice_toy") is None:
    _why = "edifice-toy is not installed (the nox `tests` session installs tests/plugins/edifice-toy)"
    if os.environ.get("EDIFICE_TEST_PLUGINS"):
        pytest.fail(f"{_why}, but EDIFICE_TEST_PLUGINS is set", pytrace=False)
    pytest.skip(_why, allow_module_level=True)


@signature("toy_mixer")
def test_toy_mixer_is_swiglu_at_every_position() -> None:
    torch.manual_seed(0)
    model = edifice.build("toy_mixer", d_in=4, d_model=3, d_hidden=5)
    x = torch.randn(2, 6, 4)
    w_gate, w_up, w_down = model.gate_proj.weight, model.up_proj.weight, model.down_proj.weight
    expected = torch.einsum("hd,btd->bth", w_gate, x)
    expected = F.silu(expected) * torch.einsum("hd,btd->bth", w_up, x)
    expected = torch.einsum("oh,bth->bto", w_down, expected)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
