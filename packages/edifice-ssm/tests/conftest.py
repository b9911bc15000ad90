"""Checks shared by the SSM model tests, as fixtures (test files cannot import each other under importlib mode)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from edifice.testing.tol import SCAN, assert_close


def sequence_inputs(model: nn.Module, batch: int, T: int, seed: int = 1) -> Tensor:
    """Seeded token ids or features for a sequence backbone, as its config asks."""
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    if c.vocab_size is not None:
        return torch.randint(0, c.vocab_size, (batch, T), generator=gen)
    return torch.randn(batch, T, c.d_in or c.d_model, generator=gen)


def _call(model: nn.Module, u: Tensor, mask: Tensor | None = None) -> Tensor:
    out = model(**{model.primary_input: u, "attention_mask": mask})
    assert isinstance(out, Tensor)
    return out


def assert_padding_is_invisible(model: nn.Module) -> None:
    """Left and right padding with ``attention_mask`` give the unpadded run's outputs at the valid positions."""
    u, pad = sequence_inputs(model, 1, 7), sequence_inputs(model, 1, 3, seed=9)
    with torch.no_grad():
        want = _call(model, u)
        left = _call(model, torch.cat([pad, u], 1), torch.tensor([[False] * 3 + [True] * 7]))
        right = _call(model, torch.cat([u, pad], 1), torch.tensor([[True] * 7 + [False] * 3]))
    assert_close(left[:, 3:], want, SCAN, name="left padded")
    assert_close(right[:, :7], want, SCAN, name="right padded")


def assert_left_padded_batch_decodes_alone(model: nn.Module) -> None:
    """Row 0's prompt is 2 positions shorter (left-padded); after the prefill each row decodes as if it were alone."""
    u = sequence_inputs(model, 2, 8)
    prompt = u[:, :5].clone()
    prompt[0, :2] = 0
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    with torch.no_grad():
        state = model.init_state(2)
        outs = [model.step(prompt, state, attention_mask=mask)[0]]
        outs += [model.step(u[:, t : t + 1], state)[0] for t in range(5, 8)]
        stepped = torch.cat(outs, dim=1)
        assert_close(stepped[:1, 2:], _call(model, u[:1, 2:]), SCAN, name="row 0")
        assert_close(stepped[1:], _call(model, u[1:]), SCAN, name="row 1")


@pytest.fixture
def padding_is_invisible() -> Callable[[nn.Module], None]:
    """:func:`assert_padding_is_invisible`, as a fixture."""
    return assert_padding_is_invisible


@pytest.fixture
def left_padded_batch_decodes_alone() -> Callable[[nn.Module], None]:
    """:func:`assert_left_padded_batch_decodes_alone`, as a fixture."""
    return assert_left_padded_batch_decodes_alone
