"""Every stateful entry's ``step`` replays in a CUDA graph and reproduces ``forward`` (the GPU machine; DESIGN §8).

The eager prefix/step equality is the contract's ``stateful`` check; this adds what only a GPU shows: ``step`` reads
nothing back to the host and updates its state in place, so :class:`edifice.graphs.GraphedStep` can capture it once
and each replay advances the state by one position.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

import edifice
from edifice.graphs import GraphedStep
from edifice.inputs import active_specs
from edifice.outputs import tensor_leaves
from edifice.registry import missing_requirements
from edifice.testing.tol import SCAN, assert_close, exact_fp32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

STATEFUL = [name for name in edifice.list_architectures() if edifice.get_spec(name).stateful]
#: Variants whose decoding differs from the tiny config's: (name, config overrides).
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("titans", {"variant": "mal"}),
    ("titans", {"variant": "mac", "window_size": 4, "mini_batch_size": 4}),
    ("hymba", {"n_layers": 3, "global_layers": ()}),  # cross-layer KV sharing: layers 1, 2 read layer 0's cache
]
CASES = [(name, {}) for name in STATEFUL] + [case for case in VARIANTS if case[0] in STATEFUL]
#: Inputs that describe the whole batch rather than one position each: never passed to a one-position step.
NOT_PER_POSITION = {"attention_mask", "cu_seqlens"}


def per_position(leaves: dict[str, torch.Tensor], t: int, length: int) -> dict[str, torch.Tensor]:
    """Positions ``t .. t + length`` of every ``[B, T, ...]`` tensor."""
    return {k: v.narrow(1, t, length) for k, v in leaves.items()}


@pytest.mark.parametrize(
    ("name", "overrides"), CASES, ids=[name + "".join(f"-{v}" for v in o.values()) for name, o in CASES]
)
def test_step_replays_in_a_cuda_graph(name: str, overrides: dict[str, Any]) -> None:
    missing = missing_requirements(name)
    if missing is not None:
        pytest.skip(missing)
    torch.manual_seed(0)
    model = edifice.build(name, **{**edifice.get_spec(name).tiny, **overrides}, device="cuda").eval()
    inputs = edifice.example_inputs(model, 2, generator=torch.Generator().manual_seed(1))
    # What step takes: the first required input (x or input_ids), as in the contract.
    key = next(k for k, ts in active_specs(edifice.get_spec(name).inputs, model.config).items() if not ts.optional)
    primary = inputs.pop(key)
    accepted = inspect.signature(model.step).parameters
    extras = {k: v for k, v in inputs.items() if k in accepted and k not in NOT_PER_POSITION}
    T = primary.shape[1]
    prefill = max(1, T // 2)
    with torch.no_grad(), exact_fp32():
        expected = dict(tensor_leaves(model(**{key: primary}, **inputs)))
        state = model.init_state(2, max_len=T)
        model.step(primary[:, :prefill], state, **per_position(extras, 0, prefill))
        graphed = GraphedStep(model, state, primary[:, prefill : prefill + 1], **per_position(extras, prefill, 1))
        steps = [
            {k: v.clone() for k, v in tensor_leaves(graphed(primary[:, t : t + 1], **per_position(extras, t, 1)))}
            for t in range(prefill, T)
        ]
    per_token = {k: v for k, v in expected.items() if v.dim() >= 2 and v.shape[1] == T}
    assert per_token, f"{name}: forward has no per-position output to compare"
    for key, full in per_token.items():
        replayed = torch.cat([s[key] for s in steps], dim=1)
        assert_close(replayed, full[:, prefill:], SCAN, name=f"{name} output {key!r} from graph replays")
