"""Decoding cost: generating 256 tokens with ``step`` costs O(1) per token for every recurrent SSM entry.

The state of an SSM is a fixed-size summary of the past, so the 256th token must cost what the 8th did: the same
state shapes (nothing grows or is reallocated) and the same number of floating-point operations per step (counted
by ``torch.utils.flop_counter``, which is deterministic, unlike a timer). Hybrids whose attention layers keep a KV
cache are excluded here: their per-token cost grows with the position by design.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import edifice
from edifice.outputs import tensor_leaves
from edifice.registry import get_spec

#: Entries whose whole state is recurrent (no KV cache), so decoding is O(1) per token.
CONSTANT_STATE = [
    name
    for name in (
        "mamba",
        "mamba_cumsum",
        "mamba_hillis_steele",
        "mamba_ssd",
        "mamba3",
        "s4",
        "s4d",
        "s5",
        "h3",
        "hyena",
        "gss",
        "gated_ssm",
        "longhorn",
    )
    if name in edifice.list_architectures()
]
TOKENS = 256
#: Tiny-config changes that make an entry purely recurrent (H3's tiny config has a Hybrid-H3 attention layer).
PURE = {"h3": {"attention_layers": ()}}


def _state_shapes(state: object) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for _, t in tensor_leaves(state)]


def _step_flops(model: torch.nn.Module, token: torch.Tensor, state: object) -> int:
    with FlopCounterMode(display=False) as counter:
        model.step(token, state)  # type: ignore[operator]
    return int(counter.get_total_flops())


@pytest.mark.parametrize("name", CONSTANT_STATE)
def test_generating_256_tokens_costs_the_same_per_token(name: str) -> None:
    torch.manual_seed(0)
    model = edifice.build(name, **{**get_spec(name).tiny, **PURE.get(name, {})}).eval()
    x = model.example_inputs(batch_size=1, T=TOKENS)[model.primary_input]
    with torch.no_grad():
        state = model.init_state(1)
        shapes = _state_shapes(state)
        flops = {}
        for t in range(TOKENS):
            token = x[:, t : t + 1]
            if t in (8, TOKENS - 1):
                flops[t] = _step_flops(model, token, state)
            else:
                model.step(token, state)
            assert _state_shapes(state) == shapes, f"{name}: the state changed shape at token {t}"
    assert flops[8] == flops[TOKENS - 1] > 0, f"{name}: per-token FLOPs grew from {flops[8]} to {flops[TOKENS - 1]}"
