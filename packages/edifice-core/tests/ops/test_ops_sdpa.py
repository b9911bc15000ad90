"""edifice.ops.sdpa: reference vs loop oracle, vs a dense textbook formula, vs PyTorch's SDPA; masks, GQA, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from edifice import ops
from edifice.ops.attention import sdpa_naive, sdpa_reference

TOL = 1e-5


def qkv(
    B: int, Hq: int, Hk: int, Tq: int, Tk: int, D: int, Dv: int, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    return draw(B, Hq, Tq, D), draw(B, Hk, Tk, D), draw(B, Hk, Tk, Dv)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    softcap: float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Textbook attention in float64 with repeated kv heads and tril/triu masks (queries = the last Tq positions)."""
    _, Hq, Tq, D = q.shape
    Hk, Tk = k.shape[1], k.shape[2]
    k = k.double().repeat_interleave(Hq // Hk, dim=1)
    v = v.double().repeat_interleave(Hq // Hk, dim=1)
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k) * (D**-0.5 if scale is None else scale)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    offset = Tk - Tq  # query i sits at position i + offset; key j at j
    keep = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        keep = keep.tril(offset)
    if window is not None:
        keep = keep & torch.ones(Tq, Tk, dtype=torch.bool).triu(offset - window + 1)
        if not causal:
            keep = keep & torch.ones(Tq, Tk, dtype=torch.bool).tril(offset + window - 1)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        keep = keep & attn_mask
    elif attn_mask is not None:
        s = s + attn_mask.double()
    s = s.masked_fill(~keep, float("-inf"))
    return (torch.softmax(s, dim=-1).nan_to_num(0.0) @ v).to(q.dtype)


# (B, Hq, Hk, Tq, Tk, D, Dv, kwargs)
CASES: dict[str, tuple[int, int, int, int, int, int, int, dict[str, Any]]] = {
    "T1": (2, 2, 2, 1, 1, 8, 8, {}),
    "causal-T7-D60": (2, 4, 2, 7, 7, 60, 60, {"causal": True}),
    "causal-T63-gqa": (1, 2, 1, 63, 63, 16, 8, {"causal": True}),
    "decode": (2, 4, 1, 1, 9, 8, 8, {"causal": True}),
    "prefill-window": (2, 2, 1, 5, 12, 8, 4, {"causal": True, "window": 4}),
    "window-bidirectional": (1, 2, 2, 7, 7, 8, 8, {"window": 2}),
    "softcap-scale": (2, 3, 1, 7, 7, 8, 8, {"causal": True, "softcap": 2.0, "scale": 0.7}),
    "noncausal-Tq-ne-Tk": (2, 2, 2, 3, 7, 8, 6, {}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_reference_matches_naive(case: tuple[Any, ...], agree: Any) -> None:
    *dims, kwargs = case
    q, k, v = qkv(*dims)
    agree(sdpa_reference, sdpa_naive, q, k, v, atol=TOL, **kwargs)


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_dispatched_op_matches_dense_formula(case: tuple[Any, ...]) -> None:
    *dims, kwargs = case
    q, k, v = qkv(*dims, seed=1)
    torch.testing.assert_close(ops.sdpa(q, k, v, **kwargs), dense_attention(q, k, v, **kwargs), atol=TOL, rtol=TOL)


def test_masks_match_naive_and_dense_formula(agree: Any) -> None:
    B, H, T = 2, 2, 7
    q, k, v = qkv(B, H, H, T, T, 8, 8, seed=2)
    gen = torch.Generator().manual_seed(3)
    padding = torch.rand(B, 1, 1, T, generator=gen) > 0.3  # key-padding mask
    padding[:, ..., 0] = True  # every row keeps a key, so the dense formula needs no special case
    additive = torch.randn(1, H, T, T, generator=gen)
    additive[0, 0, 2, :4] = float("-inf")
    for mask in (padding, additive):
        out = agree(sdpa_reference, sdpa_naive, q, k, v, atol=TOL, attn_mask=mask, causal=True)
        torch.testing.assert_close(out, dense_attention(q, k, v, attn_mask=mask, causal=True), atol=TOL, rtol=TOL)


def test_explicit_positions_match_naive(agree: Any) -> None:
    # Two packed rows with their own positions (e.g. after left padding), and a sliding window over them.
    q, k, v = qkv(2, 2, 1, 4, 6, 8, 8, seed=4)
    q_pos = torch.tensor([[2, 3, 4, 5], [5, 6, 7, 8]])
    k_pos = torch.tensor([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]])
    agree(sdpa_reference, sdpa_naive, q, k, v, atol=TOL, causal=True, window=3, q_positions=q_pos, k_positions=k_pos)
    # Shared 1-D positions equal the default "queries are the last Tq positions".
    shared = sdpa_reference(q, k, v, causal=True, q_positions=torch.arange(2, 6), k_positions=torch.arange(6))
    torch.testing.assert_close(shared, sdpa_reference(q, k, v, causal=True), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("Tq", "Tk", "causal", "Hk"), [(7, 7, True, 2), (7, 7, False, 1), (1, 9, True, 2), (5, 3, False, 4)]
)
def test_matches_torch_sdpa(Tq: int, Tk: int, causal: bool, Hk: int) -> None:
    q, k, v = qkv(2, 4, Hk, Tq, Tk, 16, 12, seed=5)
    G = 4 // Hk
    want = F.scaled_dot_product_attention(
        q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), is_causal=causal and Tq > 1
    )
    torch.testing.assert_close(sdpa_reference(q, k, v, causal=causal), want, atol=TOL, rtol=TOL)


def test_matches_torch_sdpa_with_masks() -> None:
    q, k, v = qkv(2, 2, 2, 6, 6, 8, 8, seed=6)
    gen = torch.Generator().manual_seed(7)
    bool_mask = torch.rand(2, 1, 6, 6, generator=gen) > 0.4
    bool_mask[..., 0] = True  # torch's SDPA gives NaN for a fully masked row; ours gives zeros (tested below)
    float_mask = torch.randn(2, 2, 6, 6, generator=gen)
    for mask in (bool_mask, float_mask):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(ops.sdpa(q, k, v, attn_mask=mask), want, atol=TOL, rtol=TOL)


def test_dispatch_picks_torch_sdpa_only_where_it_applies() -> None:
    q, k, v = qkv(1, 2, 1, 4, 4, 8, 8)
    assert ops.selected("sdpa", q, k, v) == "torch_sdpa"
    assert ops.selected("sdpa", q, k, v, causal=True) == "torch_sdpa"
    assert ops.selected("sdpa", q[:, :, :1], k, v, causal=True) == "torch_sdpa"
    assert ops.selected("sdpa", q[:, :, :3], k, v, causal=True) == "reference"  # torch aligns causal top-left
    for kwargs in ({"softcap": 5.0}, {"window": 2}, {"attn_mask": torch.ones(4, 4, dtype=torch.bool)}):
        assert ops.selected("sdpa", q, k, v, **kwargs) == "reference"
    with ops.use("reference"):
        assert ops.selected("sdpa", q, k, v) == "reference"
    names = [impl.name for impl in ops.implementations("sdpa")]
    assert names == ["torch_sdpa", "reference"]


def test_fully_masked_rows_give_zeros_and_zero_gradients() -> None:
    q, k, v = qkv(2, 2, 1, 3, 5, 8, 8, seed=8)
    padding = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    padding[1] = False  # sample 1 has no valid key at all
    minus_inf = torch.zeros(2, 1, 1, 5).masked_fill(~padding, float("-inf"))
    before_keys = {"causal": True, "q_positions": torch.tensor([-3, -2, -1])}  # queries precede every key
    for kwargs in ({"attn_mask": padding}, {"attn_mask": minus_inf}, before_keys):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = ops.sdpa(*leaves, **kwargs)
        out.backward(torch.randn_like(out))
        dead = slice(None) if "causal" in kwargs else 1
        assert not out[dead].any()
        for grad in (leaf.grad for leaf in leaves):
            assert grad is not None
            assert torch.isfinite(grad).all()
            assert not grad[dead].any()
        if dead == 1:
            assert out[0].abs().sum() > 0  # the other sample is untouched


@pytest.mark.parametrize("kwargs", [{}, {"causal": True}, {"causal": True, "softcap": 3.0, "window": 3}])
def test_bf16_close_to_fp32(kwargs: dict[str, Any], relative_l2: Any) -> None:
    q, k, v = qkv(2, 4, 2, 7, 7, 16, 16, seed=9, dtype=torch.bfloat16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = ops.sdpa(*leaves, **kwargs)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(leaf.grad is not None and torch.isfinite(leaf.grad).all() for leaf in leaves)
    want = sdpa_reference(q.float(), k.float(), v.float(), **kwargs)
    assert relative_l2(out, want) <= 2e-2
    assert relative_l2(sdpa_reference(q, k, v, **kwargs), want) <= 2e-2


def test_autocast_keeps_softmax_in_fp32(relative_l2: Any) -> None:
    q, k, v = qkv(2, 4, 2, 7, 7, 16, 16, seed=11)
    want = sdpa_reference(q, k, v, causal=True, softcap=3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.sdpa(q, k, v, causal=True, softcap=3.0)
    assert torch.isfinite(out).all()
    assert relative_l2(out, want) <= 2e-2


def test_dropout_is_seeded_and_off_at_zero() -> None:
    q, k, v = qkv(1, 2, 2, 5, 5, 8, 8, seed=10)
    torch.manual_seed(0)
    first = sdpa_reference(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    second = sdpa_reference(q, k, v, dropout_p=0.5)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert not torch.allclose(first, sdpa_reference(q, k, v))
    torch.testing.assert_close(sdpa_reference(q, k, v, dropout_p=0.0), dense_attention(q, k, v), atol=TOL, rtol=TOL)
    with pytest.raises(ValueError, match="dropout"):
        sdpa_naive(q, k, v, dropout_p=0.5)


def _bad(**changes: Any) -> dict[str, Any]:
    q, k, v = qkv(2, 4, 2, 3, 5, 8, 6)
    return {"q": q, "k": k, "v": v, **changes}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (_bad(q=torch.zeros(2, 4, 8)), ValueError, r"q must be \[B, Hq, Tq, D\] \(4-D\), got shape \[2, 4, 8\]"),
        (_bad(q=torch.zeros(2, 3, 3, 8)), ValueError, r"Hq=3 must be a multiple of key/value heads Hk=2"),
        (_bad(k=torch.zeros(2, 2, 5, 7)), ValueError, r"head size D"),
        (_bad(v=torch.zeros(2, 2, 4, 6)), ValueError, r"v must be \[B, Hk, Tk, Dv\] = \[2, 2, 5, Dv\]"),
        (_bad(k=torch.zeros(3, 2, 5, 8)), ValueError, r"batch sizes differ"),
        (_bad(v=torch.zeros(2, 2, 5, 6, dtype=torch.float64)), TypeError, r"share a dtype"),
        (_bad(q=torch.zeros(2, 4, 3, 8, dtype=torch.long)), TypeError, r"floating-point"),
        (_bad(q=[1, 2]), TypeError, r"q must be a tensor"),
        (_bad(attn_mask=torch.ones(2, 4, 3, 4)), ValueError, r"attn_mask must broadcast to \[B, Hq, Tq, Tk\]"),
        (_bad(attn_mask=torch.ones(2, 1, 1, 5, dtype=torch.long)), TypeError, r"bool \(True = attend\) or float"),
        (_bad(window=0), ValueError, r"window must be a positive int"),
        (_bad(softcap=-1.0), ValueError, r"softcap must be positive"),
        (_bad(dropout_p=1.0), ValueError, r"dropout_p must be in \[0, 1\)"),
        (_bad(q_positions=torch.arange(5)), ValueError, r"q_positions must be \[Tq\] = \[3\] or \[B, Tq\] = \[2, 3\]"),
        (_bad(k_positions=torch.ones(5, dtype=torch.bool)), TypeError, r"k_positions must be a numeric tensor"),
    ],
)
def test_invalid_arguments_raise_clear_errors(call: dict[str, Any], error: type[Exception], match: str) -> None:
    q, k, v = call.pop("q"), call.pop("k"), call.pop("v")
    with pytest.raises(error, match=match):
        ops.sdpa(q, k, v, **call)
