"""``tcn``: dilated causal residual blocks with weight norm (Bai et al. 2018).

The signature is the receptive field, in fp64: the output at the last position depends on exactly the last
``1 + 2 (k-1) (2^L - 1)`` inputs and on nothing later. Undilated convolutions would see fewer inputs, a centred
(non-causal) convolution would see the future, and a generic layer (attention, an RNN) would see all of the past.
Besides: stepping through a rolling buffer equals ``forward``, weight norm makes the output invariant to the scale
of ``V``, and the initialisation is the authors' N(0, 0.01²).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import signature

TINY: dict[str, Any] = {"d_in": 3, "channels": (6, 5), "kernel_size": 3, "activation": "tanh"}


def dependence(model: Any, x: torch.Tensor, t: int) -> torch.Tensor:
    """Which input positions the output at position ``t`` depends on: ``[T]`` bool from the Jacobian."""
    jac = torch.autograd.functional.jacobian(lambda inp: model(inp)[0, t], x)  # (C_out, 1, T, C_in)
    return jac.abs().sum(dim=(0, 1, 3)) > 0


@signature("tcn")
def test_receptive_field_is_the_papers() -> None:
    torch.manual_seed(0)
    model = edifice.build("tcn", dtype=torch.float64, **TINY).eval()
    R = model.config.receptive_field
    assert R == 1 + 2 * 2 * (1 + 2)  # two convolutions per level, dilations 1 and 2
    T = R + 4
    x = torch.randn(1, T, 3, dtype=torch.float64)
    seen = dependence(model, x, T - 1)
    assert seen.tolist() == [False] * (T - R) + [True] * R
    mid = 6
    seen = dependence(model, x, mid)
    assert seen.tolist() == [True] * (mid + 1) + [False] * (T - mid - 1)  # the past only (fewer than R exist)


def test_step_with_rolling_buffer_equals_forward() -> None:
    torch.manual_seed(0)
    model = edifice.build("tcn", **TINY).eval()
    x = torch.randn(2, 19, 3)
    with torch.no_grad():
        full = model(x)
        state = model.init_state(2)
        pieces = []
        for start, length in [(0, 5), (5, 1), (6, 3), (9, 1), (10, 9)]:
            y, state = model.step(x[:, start : start + length], state)
            pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert [tuple(b.shape) for b in state.buffers] == [(2, 3, 2), (2, 6, 2), (2, 6, 4), (2, 5, 4)]


def test_weight_norm_reparameterises() -> None:
    torch.manual_seed(0)
    model = edifice.build("tcn", dtype=torch.float64, **TINY).eval()
    conv = model.blocks[1].conv1
    v, g = conv.weight_v, conv.weight_g
    torch.testing.assert_close(conv.effective_weight(), g * v / v.norm(dim=(1, 2), keepdim=True))
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        v.mul_(3.0)  # the direction is unchanged, so the weight is
        after = model(x)
        g.mul_(2.0)
        changed = model(x)
    torch.testing.assert_close(after, before)
    assert not torch.allclose(changed, before)


def test_initialisation_is_the_authors() -> None:
    torch.manual_seed(0)
    model = edifice.build("tcn", d_in=16, channels=(64, 64))
    conv = model.blocks[1].conv2
    assert abs(conv.weight_v.std().item() - 0.01) < 1e-3
    torch.testing.assert_close(conv.effective_weight(), conv.weight_v)  # g = ||V|| at initialisation
    assert abs(model.blocks[0].downsample.weight.std().item() - 0.01) < 2e-3


def test_non_causal_sees_the_future_and_does_not_step() -> None:
    torch.manual_seed(0)
    model = edifice.build("tcn", dtype=torch.float64, causal=False, **TINY).eval()
    x = torch.randn(1, 16, 3, dtype=torch.float64)
    assert dependence(model, x, 0)[1:].any()
    with pytest.raises(RuntimeError, match="causal=True"):
        model.init_state(1)


@pytest.mark.parametrize(("output", "shape"), [("last", (2, 5)), ("mean", (2, 5)), ("max", (2, 5)), ("all", (2, 7, 5))])
def test_pooled_outputs(output: str, shape: tuple[int, ...]) -> None:
    model = edifice.build("tcn", **{**TINY, "output": output}).eval()
    x = torch.randn(2, 7, 3)
    with torch.no_grad():
        y = model(x)
        full = edifice.build("tcn", **TINY).eval()
        full.load_state_dict(model.state_dict())
        h = full(x)
    assert y.shape == shape
    want = {"last": h[:, -1], "mean": h.mean(1), "max": h.amax(1), "all": h}[output]
    torch.testing.assert_close(y, want)


def test_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        edifice.config("tcn", kernel_size=0)
    with pytest.raises(ValueError, match="channels"):
        edifice.config("tcn", channels=())
    with pytest.raises(ValueError, match="output"):
        edifice.config("tcn", output="first")
    model = edifice.build("tcn", **TINY)
    with pytest.raises(edifice.InputError, match="expected"):
        model(torch.randn(2, 7, 4))


@pytest.mark.slow
def test_learns_a_tiny_batch() -> None:
    """DESIGN §8's learning check: 200 Adam steps cut the loss on one tiny batch by >= 80%."""
    torch.manual_seed(0)
    model = edifice.build("tcn", **TINY)
    x, target = torch.randn(2, 8, 3), torch.rand(2, 8, 5) - 0.5  # tanh outputs lie in (-1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        loss = ((model(x) - target) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0]
