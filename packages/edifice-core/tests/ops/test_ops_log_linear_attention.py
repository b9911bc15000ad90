"""edifice.ops.log_linear_attention: the chunked form vs the Fenwick recurrence vs the masked form (eq. 7).

The three forms must agree on outputs, input gradients and the final Fenwick state at odd lengths, chunk sizes that
do not divide T, non-zero offsets and initial states. With every λ equal the op is linear attention with a scalar
decay (Mamba-2), and the state of a prefix continues the sequence exactly. (edifice-attention's test_log_linear.py
checks the op against flash-linear-attention's ``naive_log_linear_attn``, the authors' reference of eq. 7.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.log_linear_attention import (
    fenwick_level,
    log_linear_attention_masked,
    log_linear_attention_naive,
    log_linear_attention_recurrent,
    log_linear_attention_reference,
)
from edifice.testing import mutate_op

TOL = 1e-4


def inputs(B: int, T: int, H: int, K: int, V: int, L: int, seed: int, dtype: torch.dtype = torch.float32) -> list[Any]:
    gen = torch.Generator().manual_seed(seed)

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=dtype)

    g = -torch.rand(B, T, H, generator=gen, dtype=dtype) * 0.3
    return [r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), g, torch.rand(B, T, H, L, generator=gen, dtype=dtype)]


def flat(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., torch.Tensor]:
    """The op's ``(o, final)`` as one tensor, so outputs, final state and their gradients are compared at once."""

    def run(*args: Any) -> torch.Tensor:
        o, final = fn(*args, **kwargs)
        return torch.cat([o.flatten(), final.flatten()])

    return run


# name: (T, chunk_size, offset, levels, with initial state)
CASES = {
    "T1": (1, 4, 0, 5, True),
    "T1-offset": (1, 4, 7, 5, True),
    "T63-C8-offset5": (63, 8, 5, 7, True),
    "T130-C16": (130, 16, 0, 9, False),
    "T130-C32-offset37": (130, 32, 37, 9, True),
    "T20-top-level-clamped": (20, 4, 1000, 4, True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_chunked_recurrent_and_masked_forms_agree(case: tuple[int, int, int, int, bool], agree: Any) -> None:
    T, C, off, L, with_state = case
    args = inputs(2, T, 2, 3, 4, L, seed=T)
    if with_state:
        args.append(torch.randn(2, 2, L, 3, 4, generator=torch.Generator().manual_seed(9)))
    else:
        args.append(None)
    *xs, S0 = args
    kw = {"initial_state": S0, "offset": off}
    agree(
        flat(log_linear_attention_reference, chunk_size=C, **kw),
        flat(log_linear_attention_naive, **kw),
        *xs,
        atol=TOL,
        rtol=TOL,
    )
    agree(flat(log_linear_attention_masked, **kw), flat(log_linear_attention_naive, **kw), *xs, atol=TOL, rtol=TOL)


def test_equal_levels_reduce_to_linear_attention_with_scalar_decay() -> None:
    q, k, v, g, lam = inputs(2, 37, 2, 3, 4, 7, seed=2, dtype=torch.float64)
    got, final = log_linear_attention_reference(q, k, v, g, torch.full_like(lam, 0.7), chunk_size=8)
    want, S = ops.linear_attention(q, k, v, g)
    torch.testing.assert_close(got, 0.7 * want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(final.sum(2), S, atol=1e-6, rtol=1e-6)  # the op keeps its state in fp32


def test_levels_matter() -> None:
    q, k, v, g, lam = inputs(1, 24, 1, 3, 4, 6, seed=3)
    got, _ = log_linear_attention_reference(q, k, v, g, lam, chunk_size=8)
    with mutate_op("log_linear_attention"):
        flat_o, _ = ops.log_linear_attention(q, k, v, g, lam, chunk_size=8)
    assert (got - flat_o).abs().max() > 1e-2


def test_state_of_a_prefix_continues_the_sequence() -> None:
    q, k, v, g, lam = inputs(2, 45, 2, 3, 4, 7, seed=4)
    whole, final = log_linear_attention_reference(q, k, v, g, lam, chunk_size=8)
    a, S = log_linear_attention_reference(q[:, :19], k[:, :19], v[:, :19], g[:, :19], lam[:, :19], chunk_size=8)
    rest = [t[:, 19:] for t in (q, k, v, g, lam)]
    b, S2 = log_linear_attention_reference(*rest, initial_state=S, offset=19, chunk_size=16)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, atol=TOL, rtol=TOL)
    torch.testing.assert_close(S2, final, atol=TOL, rtol=TOL)
    # one step with a tensor offset per row (the decoding path) is the recurrence
    pos = torch.tensor([19, 19])
    one = [t[:, 19:20] for t in (q, k, v, g, lam)]
    o1, _ = ops.log_linear_attention(*one, initial_state=S, offset=pos)
    torch.testing.assert_close(o1, whole[:, 19:20], atol=TOL, rtol=TOL)


def test_state_holds_log_many_levels_and_buckets_are_fenwick() -> None:
    pos = torch.arange(16)
    lvl = fenwick_level(torch.tensor(13), pos[:14], 8).tolist()
    # 13 = 0b1101: itself at 0, 12 at level 1, 8..11 at level 3, 0..7 at level 4 (bit 1 of 13 is clear: level 2 empty)
    assert lvl == [4] * 8 + [3] * 4 + [1, 0]
    assert fenwick_level(torch.tensor(0), torch.tensor(-1), 8).item() == 7
    _, S = log_linear_attention_recurrent(*inputs(1, 100, 1, 2, 2, 8, seed=5))
    assert S.shape == (1, 1, 8, 2, 2)


def test_bad_arguments_raise() -> None:
    q, k, v, g, lam = inputs(1, 4, 1, 2, 2, 3, seed=6)
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        ops.log_linear_attention(q, k, v, g, lam, chunk_size=6)
    with pytest.raises(ValueError, match="level_scales"):
        ops.log_linear_attention(q, k, v, g, lam[..., 0])
    with pytest.raises(ValueError, match="initial_state"):
        ops.log_linear_attention(q, k, v, g, lam, initial_state=torch.zeros(1, 1, 2, 2, 2))
    with pytest.raises(ValueError, match="offset"):
        ops.log_linear_attention(q, k, v, g, lam, offset=-1)
