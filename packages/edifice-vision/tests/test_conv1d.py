"""``conv1d``: the classic 1-D CNN (LeCun et al. 1998) over a sequence.

The signature is an fp64 oracle: each layer recomputed from its weights by the defining sum
``y_t = b + sum_k W_k x_(t-K+1+k)`` (causal, zero history) or its centred form, one position and one tap at a time,
equals ``forward``; and the output at ``t`` depends on exactly the inputs ``t - R + 1 .. t``,
``R = 1 + sum_i (K_i - 1)``. Stepping through rolling buffers equals ``forward``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import signature

TINY: dict[str, Any] = {"d_in": 3, "channels": (5, 4), "kernel_sizes": (3, 2)}


def oracle(model: Any, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Every layer as the defining sum over taps, one output position at a time, then ReLU."""
    h = x
    for conv in model.convs:
        W, b = conv.weight, conv.bias  # (C_out, C_in, K), (C_out,)
        K = W.shape[-1]
        left = K - 1 if causal else (K - 1) // 2
        T = h.shape[1]
        out = []
        for t in range(T):
            y = b.expand(h.shape[0], -1).clone()
            for k in range(K):
                s = t - left + k
                if 0 <= s < T:
                    y = y + h[:, s] @ W[:, :, k].T
            out.append(y)
        h = torch.relu(torch.stack(out, 1))
    return h


@signature("conv1d")
@pytest.mark.parametrize("causal", [True, False])
def test_forward_is_the_convolution_sum(causal: bool) -> None:
    torch.manual_seed(0)
    model = edifice.build("conv1d", dtype=torch.float64, causal=causal, **TINY).eval()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), oracle(model, x, causal), atol=1e-12, rtol=1e-12)
    if causal:
        R = model.config.receptive_field
        assert R == 4
        model = edifice.build("conv1d", dtype=torch.float64, activation="identity", **TINY).eval()
        jac = torch.autograd.functional.jacobian(lambda inp: model(inp)[0, 7], x[:1])
        seen = jac.abs().sum(dim=(0, 1, 3)) > 0
        assert seen.tolist() == [False] * (8 - R) + [True] * R + [False]


def test_step_with_rolling_buffer_equals_forward() -> None:
    torch.manual_seed(0)
    model = edifice.build("conv1d", **TINY).eval()
    x = torch.randn(2, 11, 3)
    with torch.no_grad():
        full = model(x)
        state = model.init_state(2)
        pieces = []
        for start, length in [(0, 1), (1, 4), (5, 1), (6, 5)]:
            y, state = model.step(x[:, start : start + length], state)
            pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="kernel_sizes"):
        edifice.config("conv1d", channels=(4, 4), kernel_sizes=(3,))
    with pytest.raises(ValueError, match="activation"):
        edifice.config("conv1d", activation="relu7")
    cfg = edifice.config("conv1d", input_size=5, pooling="max")
    assert (cfg.d_in, cfg.output) == (5, "max")
    model = edifice.build("conv1d", **TINY)
    with pytest.raises(edifice.InputError, match="expected"):
        model(torch.randn(2, 7))
    with pytest.raises(RuntimeError, match="causal=True"):
        edifice.build("conv1d", causal=False, **TINY).step(torch.randn(1, 2, 3), None)


@pytest.mark.slow
def test_learns_a_tiny_batch() -> None:
    """DESIGN §8's learning check: 200 Adam steps cut the loss on one tiny batch by >= 80%."""
    torch.manual_seed(0)
    model = edifice.build("conv1d", **TINY)
    x, target = torch.randn(2, 8, 3), torch.rand(2, 8, 4)  # ReLU outputs are >= 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        loss = ((model(x) - target) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0]
