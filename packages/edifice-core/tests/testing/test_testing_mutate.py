"""mutate_op and its ready-made wrong implementations; the signature marker helper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice import ops
from edifice.testing import mutate_op, signature
from edifice.testing.mutate import (
    MUTATIONS,
    no_decay_recurrence,
    stateless_causal_conv1d,
    unmasked_sdpa,
    unnormalized_rms_norm,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_unmasked_sdpa_is_plain_softmax_attention_whatever_it_is_asked() -> None:
    g = _gen()
    q = torch.randn(2, 4, 5, 8, generator=g)
    k = torch.randn(2, 2, 7, 8, generator=g)  # GQA: two query heads per key/value head
    v = torch.randn(2, 2, 7, 6, generator=g)
    out = unmasked_sdpa(q, k, v, causal=True, window=2, attn_mask=torch.zeros(2, 1, 1, 7, dtype=torch.bool))
    k_rep, v_rep = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k_rep, v_rep), rtol=1e-5, atol=1e-5)
    scaled = unmasked_sdpa(q, k, v, scale=0.5)
    expected = torch.softmax(q @ k_rep.transpose(-1, -2) * 0.5, dim=-1) @ v_rep
    torch.testing.assert_close(scaled, expected, rtol=1e-5, atol=1e-5)


def test_no_decay_recurrence_is_a_running_sum() -> None:
    g = _gen(1)
    a = torch.rand(2, 5, 3, generator=g)  # ignored: a_t = 1
    b = torch.randn(2, 5, 3, generator=g)
    h0 = torch.randn(2, 3, generator=g)
    h, expected = h0.clone(), []
    for t in range(5):
        h = h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(no_decay_recurrence(a, b, h0), torch.stack(expected, 1))
    torch.testing.assert_close(no_decay_recurrence(a, b), b.cumsum(1))


def test_unnormalized_rms_norm_only_scales() -> None:
    x, w = torch.randn(2, 4, generator=_gen(2)), torch.randn(4, generator=_gen(3))
    torch.testing.assert_close(unnormalized_rms_norm(x, w, eps=1e-6), x * w)
    torch.testing.assert_close(unnormalized_rms_norm(x), x)


def test_stateless_causal_conv1d_ignores_the_initial_state() -> None:
    g = _gen(4)
    x, w, bias = torch.randn(2, 6, 3, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    state = torch.randn(2, 3, 3, generator=g)
    padded = torch.cat([torch.zeros(2, 3, 3), x], dim=1)  # zero history of K - 1 = 3 steps
    expected = torch.stack([(padded[:, t : t + 4] * w.T).sum(1) + bias for t in range(6)], dim=1)
    torch.testing.assert_close(stateless_causal_conv1d(x, w, bias, initial_state=state), expected)


def test_every_ready_made_mutation_names_an_existing_op() -> None:
    assert set(MUTATIONS) <= set(ops.names())


def test_mutate_op_swaps_the_op_for_already_built_models_and_restores_it(
    register_toy: Callable[..., str],
) -> None:
    model: Any = edifice.build(register_toy()).eval()
    x = torch.randn(2, 6, 3, generator=_gen(5))
    before = model(x)
    with mutate_op("linear_recurrence") as impl:
        assert impl is no_decay_recurrence
        mutated = model(x)
        # With a_t = 1 the state is the running sum of (1 - a) u_t.
        u = model.features(x)
        h = ((1 - model.decay()) * u).cumsum(1)
        torch.testing.assert_close(mutated, model.out_proj(h) + model.skip * u)
    torch.testing.assert_close(model(x), before)


def _impulse_response_decays(model: Any) -> None:
    """The toy's signature: the response to an impulse at t = 0 is h_t = a^t (1 - a) u_0 (see edifice_kit_toys)."""
    zeros = torch.zeros(1, 6, 3)
    x = zeros.clone()
    x[0, 0] = torch.tensor([1.0, -2.0, 0.5])
    # The model is affine in x: subtracting the response to zeros leaves the linear response to the impulse.
    y = (model(x) - model(zeros))[0]  # (T, D)
    u0 = (model.features(x) - model.features(zeros))[0, 0]  # (D,)
    a = model.decay()
    h = torch.stack([a**t * (1 - a) * u0 for t in range(6)])  # (T, D)
    expected = h @ model.out_proj.weight.T
    expected[0] += model.skip * u0
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@signature("kit_toy")
def test_toy_signature_holds_and_fails_under_the_mutation(register_toy: Callable[..., str]) -> None:
    model = edifice.build(register_toy()).eval()
    with torch.no_grad():
        _impulse_response_decays(model)
        with mutate_op("linear_recurrence"), pytest.raises(AssertionError):
            _impulse_response_decays(model)


def test_mutate_op_takes_any_wrong_implementation_and_refuses_unknown_ops() -> None:
    q = torch.randn(1, 1, 3, 4, generator=_gen(6))
    with mutate_op("sdpa", lambda q, k, v, **kw: torch.zeros_like(q)):
        assert torch.equal(ops.sdpa(q, q, q, causal=True), torch.zeros_like(q))
    assert not torch.equal(ops.sdpa(q, q, q, causal=True), torch.zeros_like(q))
    with pytest.raises(ValueError, match="no ready-made wrong implementation of 'no_such_op'"), mutate_op("no_such_op"):
        pass
    with pytest.raises(KeyError), mutate_op("no_such_op", unmasked_sdpa):
        pass


def test_the_kit_namespace_is_lazy_and_complete() -> None:
    import edifice.testing as kit

    assert set(kit.__all__) <= set(dir(kit))
    assert all(getattr(kit, name) is not None for name in kit.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'check_speed'"):
        kit.check_speed  # noqa: B018


def test_signature_is_the_pytest_marker() -> None:
    mark = signature("decoder_only")
    assert isinstance(mark, pytest.MarkDecorator)
    assert (mark.name, mark.args) == ("signature", ("decoder_only",))
    with pytest.raises(TypeError, match="architecture name"):
        signature("")
