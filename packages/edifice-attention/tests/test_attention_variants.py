"""The softmax-attention variants step like ``forward`` at odd lengths, in chunks that do not divide the length."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import redraw_parameters

VARIANTS = ("diff_transformer", "gated_attention", "sigmoid_attention", "ssmax", "softpick", "fox", "laser")


@pytest.mark.parametrize("T", [1, 63])
@pytest.mark.parametrize("name", VARIANTS)
def test_chunked_steps_match_forward(name: str, T: int) -> None:
    torch.manual_seed(0)
    model: Any = redraw_parameters(edifice.build(name, **edifice.get_spec(name).tiny).eval(), seed=1)
    gen = torch.Generator().manual_seed(T)
    c = model.config
    if c.vocab_size is not None:
        inputs = torch.randint(0, c.vocab_size, (2, T), generator=gen)
    else:
        inputs = torch.randn(2, T, c.d_in or c.d_model, generator=gen)
    with torch.no_grad():
        want = model(**{model.primary_input: inputs})
        state = model.init_state(2, max_len=T)  # a static cache
        outs, start = [], 0
        for size in (5, 1, 7, 3) * 10:  # a prefill of 5, then chunks of 1, 7 and 3: none divides 63
            if start >= T:
                break
            outs.append(model.step(inputs[:, start : start + size], state)[0])
            start += size
        torch.testing.assert_close(torch.cat(outs, 1), want, atol=1e-4, rtol=1e-4)
