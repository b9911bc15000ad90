"""edifice.ops.block_sparse_attention: reference vs the fp64 per-query oracle, all-blocks = dense, mutation, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.attention import sdpa_reference
from edifice.ops.block_sparse_attention import block_sparse_attention_naive, block_sparse_attention_reference
from edifice.testing.mutate import all_blocks_attention

TOL = 1e-5


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(B: int, Hq: int, Hk: int, Hs: int, Tq: int, Tk: int, bs: int, seed: int = 0) -> list[torch.Tensor]:
    nb = -(-Tk // bs)
    sel = torch.rand(B, Hs, Tq, nb, generator=torch.Generator().manual_seed(seed + 3)) < 0.5
    return [randn(B, Hq, Tq, 8, seed=seed), randn(B, Hk, Tk, 8, seed=seed + 1), randn(B, Hk, Tk, 6, seed=seed + 2), sel]


# (B, Hq, Hk, Hs, Tq, Tk, block_size)
CASES = {
    "T1": (1, 2, 2, 2, 1, 1, 1),
    "gqa-shared": (2, 4, 2, 2, 9, 9, 2),
    "per-query-head": (1, 4, 2, 4, 11, 11, 3),
    "one-selection": (2, 2, 1, 1, 7, 7, 4),
    "decode": (2, 2, 2, 2, 1, 10, 3),
    "prefill": (1, 2, 2, 2, 4, 10, 3),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_reference_matches_naive(case: tuple[int, ...], agree: Any) -> None:
    *dims, bs = case
    q, k, v, sel = inputs(*dims, bs)
    agree(
        block_sparse_attention_reference, block_sparse_attention_naive, q, k, v, sel, block_size=bs, atol=TOL, rtol=TOL
    )


def test_positions_padding_window_match_naive(agree: Any) -> None:
    q, k, v, sel = inputs(2, 2, 2, 2, 6, 6, 2, seed=5)
    pos = torch.tensor([[-1, -1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    pad = (pos >= 0)[:, None, None, :]
    kw = {"block_size": 2, "q_positions": pos, "k_positions": pos, "attn_mask": pad, "window": 3}
    agree(
        block_sparse_attention_reference, block_sparse_attention_naive, q, k, v, sel[..., :3], atol=TOL, rtol=TOL, **kw
    )


def test_every_block_is_dense_causal_attention() -> None:
    q, k, v, sel = inputs(2, 4, 2, 2, 9, 9, 2, seed=7)
    every = torch.ones_like(sel)
    dense = sdpa_reference(q, k, v, causal=True)
    torch.testing.assert_close(ops.block_sparse_attention(q, k, v, every, block_size=2), dense, atol=TOL, rtol=TOL)
    assert not torch.allclose(ops.block_sparse_attention(q, k, v, sel, block_size=2), dense, atol=1e-3)


def test_no_block_gives_zeros_and_finite_gradients() -> None:
    q, k, v, sel = inputs(1, 2, 2, 2, 5, 5, 2, seed=9)
    q.requires_grad_(True)
    out = ops.block_sparse_attention(q, k, v, torch.zeros_like(sel), block_size=2)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_mutation_ignores_the_selection() -> None:
    q, k, v, sel = inputs(1, 2, 2, 2, 8, 8, 2, seed=13)
    wrong = all_blocks_attention(q, k, v, sel, block_size=2, causal=True)
    torch.testing.assert_close(wrong, sdpa_reference(q, k, v, causal=True))
    assert not torch.allclose(wrong, block_sparse_attention_reference(q, k, v, sel, block_size=2), atol=1e-3)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"block_mask": "float"}, TypeError, "block_mask must be bool"),
        ({"block_mask": "heads3"}, ValueError, "must divide the query heads"),
        ({"block_mask": "rank3"}, ValueError, "block_mask"),
        ({"block_size": 0}, ValueError, "block_size must be a positive int"),
    ],
)
def test_bad_arguments_raise(change: dict[str, Any], error: type[Exception], match: str) -> None:
    q, k, v, sel = inputs(1, 4, 2, 2, 4, 4, 2)
    kw: dict[str, Any] = {"block_size": 2}
    if change.get("block_mask") == "float":
        sel = sel.float()
    elif change.get("block_mask") == "heads3":
        sel = torch.ones(1, 3, 4, 2, dtype=torch.bool)
    elif change.get("block_mask") == "rank3":
        sel = sel[0]
    kw.update({key: val for key, val in change.items() if key != "block_mask"})
    with pytest.raises(error, match=match):
        ops.block_sparse_attention(q, k, v, sel, **kw)
