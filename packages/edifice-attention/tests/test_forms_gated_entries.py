"""Parallel, chunked and recurrent forms of ``gsa``, ``kda``, ``retnet_v2`` and ``gla_v2`` agree, from a non-zero state.

Each entry's mechanism is its mixer's ``attend`` (GSA's two passes, KDA's generalized delta rule, the linear-attention
op of the others) on the q, k, v and gates its own layer computes. The inputs are captured from a forward pass of a
tiny perturbed mixer; ``attend`` then runs from a random initial state under each form of the ops it calls:

* chunked -- the ops' references with a chunk size that does not divide T (16 for T = 63, 48 for T = 130);
* parallel -- the quadratic forms (``*_parallel``; the delta rule as one chunk spanning the sequence);
* recurrent -- the step-by-step forms (``*_recurrent``).

Outputs, final states and the gradients of every input (the initial state's included) must agree at T = 1, 63, 130.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import torch

import edifice
from edifice.ops.delta_rule import generalized_delta_rule_recurrent, generalized_delta_rule_reference
from edifice.ops.linear_attention import (
    gated_linear_attention_parallel,
    gated_linear_attention_recurrent,
    linear_attention_parallel,
    linear_attention_recurrent,
)

TOL = 1e-4  # scans (edifice.testing.tol)
ARCHS = {
    "gsa": {"num_slots": 6},
    "kda": {},
    "retnet_v2": {},
    "gla_v2": {"gate_low_rank_dim": 4},
}
LENGTHS = {"T1": (1, 64), "T63-chunk16": (63, 16), "T130-chunk48": (130, 48)}


def _one_chunk(T: int) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return generalized_delta_rule_reference(*args, **{**kwargs, "chunk_size": max(T, 1)})

    return call


FORMS: dict[str, Callable[[int], dict[str, Callable[..., Any]]]] = {
    "parallel": lambda T: {
        "linear_attention": linear_attention_parallel,
        "gated_linear_attention": gated_linear_attention_parallel,
        "generalized_delta_rule": _one_chunk(T),
    },
    "recurrent": lambda T: {
        "linear_attention": linear_attention_recurrent,
        "gated_linear_attention": gated_linear_attention_recurrent,
        "generalized_delta_rule": generalized_delta_rule_recurrent,
    },
}


@contextmanager
def form(name: str, T: int) -> Iterator[None]:
    """Every op the entries call runs in form ``name`` ("chunked": the references as dispatched)."""
    with ExitStack() as stack:
        for op, impl in ({} if name == "chunked" else FORMS[name](T)).items():
            stack.enter_context(edifice.ops.swap(op, impl))
        yield


def captured_inputs(arch: str, T: int, chunk: int) -> tuple[Any, list[torch.Tensor]]:
    """A tiny perturbed mixer of ``arch`` and the ``(q, k, v, g)`` its forward hands to ``attend``, plus a random S₀."""
    model: Any = edifice.build(arch, d_model=16, n_layers=1, n_heads=2, chunk_size=chunk, **ARCHS[arch]).eval()
    mixer = model.layers[0].mixer
    gen = torch.Generator().manual_seed(T)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    seen: list[torch.Tensor] = []
    original = mixer.attend

    def spy(q: Any, k: Any, v: Any, g: Any, initial: Any) -> Any:
        seen.extend([q, k, v, g])
        return original(q, k, v, g, initial)

    mixer.attend = spy
    with torch.no_grad():
        mixer(torch.randn(2, T, 16, generator=gen))
    del mixer.attend
    S0 = torch.randn(mixer.init_state(2).recurrent.shape, generator=gen)
    return mixer, [t.detach().clone() for t in seen] + [S0]


def run(mixer: Any, inputs: list[torch.Tensor], name: str, T: int) -> tuple[torch.Tensor, ...]:
    """``attend`` in form ``name``: (o, final state, grads of q, k, v, g and S₀) for a fixed random cotangent."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    with form(name, T):
        o, final = mixer.attend(*leaves)
    gen = torch.Generator().manual_seed(0)
    loss = (o * torch.randn(o.shape, generator=gen)).sum() + (final * torch.randn(final.shape, generator=gen)).sum()
    grads = torch.autograd.grad(loss, leaves)
    return (o.detach(), final.detach(), *grads)


@pytest.mark.parametrize("length", LENGTHS.values(), ids=list(LENGTHS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_parallel_chunked_and_recurrent_forms_agree(arch: str, length: tuple[int, int]) -> None:
    T, chunk = length
    mixer, inputs = captured_inputs(arch, T, chunk)
    chunked = run(mixer, inputs, "chunked", T)
    assert chunked[1].abs().sum() > 0 and all(torch.isfinite(t).all() for t in chunked)
    for name in ("parallel", "recurrent"):
        names = ["o", "state", "dq", "dk", "dv", "dg", "dS0"]
        for got, want, what in zip(run(mixer, inputs, name, T), chunked, names, strict=True):
            torch.testing.assert_close(got, want, atol=TOL, rtol=TOL, msg=lambda m, w=what, n=name: f"{n} {w}: {m}")
