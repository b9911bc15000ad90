"""edifice.ops.variant_attention: reference vs the fp64 loop oracle for every normaliser, gate bias and exp-values."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.attention import sdpa_reference
from edifice.ops.attention_variants import normalize_scores, variant_attention_naive, variant_attention_reference
from edifice.testing.mutate import variant_as_softmax_attention

TOL = 1e-5


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def qkv(B: int, Hq: int, Hk: int, Tq: int, Tk: int, D: int, Dv: int, seed: int = 0) -> list[torch.Tensor]:
    return [randn(B, Hq, Tq, D, seed=seed), randn(B, Hk, Tk, D, seed=seed + 1), randn(B, Hk, Tk, Dv, seed=seed + 2)]


def gates(B: int, H: int, Tq: int, Tk: int, seed: int) -> dict[str, torch.Tensor]:
    """Cumulative log forget gates c (keys) and the queries' c (the last Tq of them)."""
    c = torch.nn.functional.logsigmoid(2 + randn(B, H, Tk, seed=seed)).cumsum(-1)
    return {"k_log_gates": c, "q_log_gates": c[..., Tk - Tq :].clone()}


# (B, Hq, Hk, Tq, Tk, D, Dv, kwargs)
CASES: dict[str, tuple[Any, ...]] = {
    "softmax-T1": (1, 2, 2, 1, 1, 8, 8, {}),
    "sigmoid-causal-gqa": (2, 4, 2, 7, 7, 8, 6, {"normalizer": "sigmoid", "causal": True, "logit_bias": -2.0}),
    "softpick-causal-D60": (1, 2, 1, 9, 9, 60, 60, {"normalizer": "softpick", "causal": True}),
    "softpick-decode": (2, 2, 2, 1, 9, 8, 8, {"normalizer": "softpick", "causal": True}),
    "softpick-window": (1, 2, 2, 6, 6, 8, 8, {"normalizer": "softpick", "causal": True, "window": 3}),
    "laser-causal": (2, 2, 1, 8, 8, 8, 8, {"exp_values": True, "causal": True}),
    "laser-prefill": (1, 2, 2, 3, 7, 8, 4, {"exp_values": True, "causal": True}),
    "sigmoid-noncausal": (1, 1, 1, 3, 5, 8, 8, {"normalizer": "sigmoid"}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_reference_matches_naive(case: tuple[Any, ...], agree: Any) -> None:
    *dims, kwargs = case
    agree(variant_attention_reference, variant_attention_naive, *qkv(*dims), atol=TOL, rtol=TOL, **kwargs)


@pytest.mark.parametrize("normalizer", ["softmax", "softpick"])
def test_forget_gates_match_naive(normalizer: str, agree: Any) -> None:
    q, k, v = qkv(2, 4, 2, 5, 9, 8, 8, seed=3)
    kw = {"causal": True, "normalizer": normalizer, **gates(2, 4, 5, 9, seed=4)}
    agree(variant_attention_reference, variant_attention_naive, q, k, v, atol=TOL, rtol=TOL, **kw)


def test_padding_and_additive_masks_match_naive(agree: Any) -> None:
    q, k, v = qkv(2, 2, 2, 6, 6, 8, 8, seed=5)
    pad = torch.tensor([[False, False, True, True, True, True], [True] * 6])[:, None, None, :]
    for normalizer in ("softmax", "sigmoid", "softpick"):
        kw = {"causal": True, "attn_mask": pad, "normalizer": normalizer}
        out = agree(variant_attention_reference, variant_attention_naive, q, k, v, atol=TOL, rtol=TOL, **kw)
        assert out[0, :, :2].abs().max() == 0  # rows with no key left are zero
    additive = randn(1, 1, 6, 6, seed=6)
    kw = {"attn_mask": additive, "exp_values": True}
    agree(variant_attention_reference, variant_attention_naive, q, k, v, atol=TOL, rtol=TOL, **kw)


def test_softmax_without_extras_is_sdpa() -> None:
    q, k, v = qkv(2, 4, 2, 7, 7, 8, 8, seed=7)
    torch.testing.assert_close(
        ops.variant_attention(q, k, v, causal=True), sdpa_reference(q, k, v, causal=True), atol=1e-6, rtol=1e-6
    )


def test_unit_forget_gates_are_softmax_attention() -> None:
    # FoX's property: with every f_t = 1 (log f = 0), D = 0 and forgetting attention is softmax attention.
    q, k, v = qkv(1, 2, 2, 6, 6, 8, 8, seed=8)
    zero = torch.zeros(1, 2, 6)
    got = ops.variant_attention(q, k, v, causal=True, q_log_gates=zero, k_log_gates=zero)
    torch.testing.assert_close(got, sdpa_reference(q, k, v, causal=True), atol=1e-6, rtol=1e-6)


def test_softpick_on_hand_made_scores() -> None:
    # Softpick(x) = ReLU(e^x - 1) / (sum |e^x - 1| + eps): x = (0, log 2, log 3, -log 2) -> (0, 1, 2, 0) / 3.5.
    x = torch.tensor([[0.0, math_log(2), math_log(3), -math_log(2)]])
    got = normalize_scores(x, None, "softpick")
    torch.testing.assert_close(got, torch.tensor([[0.0, 1.0, 2.0, 0.0]]) / (3.5 + 1e-6), atol=1e-7, rtol=1e-6)
    # The stable form survives scores whose e^x overflows fp32 and keeps an all-negative row at zero.
    big = normalize_scores(torch.tensor([[200.0, 199.0, -5.0]]), None, "softpick")
    assert torch.isfinite(big).all() and abs(float(big.sum()) - 1.0) < 1e-6
    assert normalize_scores(torch.tensor([[-1.0, -3.0]]), None, "softpick").abs().max() == 0


def math_log(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float64).log())


def test_laser_is_log_of_attention_on_exp_values() -> None:
    # LASER: out = log(softmax(QK^T) exp(V)), here without any shift in fp64 on small values.
    q, k, v = (t.double() for t in qkv(1, 1, 1, 5, 5, 4, 4, seed=9))
    want = torch.log(
        torch.softmax((q @ k.transpose(-1, -2)) / 2 + torch.full((5, 5), float("-inf")).triu(1), -1) @ v.exp()
    )
    got = variant_attention_reference(q, k, v, exp_values=True, causal=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # the reference computes in fp32
    # Large values: the max shift keeps it finite where exp(v) alone overflows fp32.
    huge = ops.variant_attention(q.float(), k.float(), 100 * v.float() + 80, exp_values=True, causal=True)
    assert torch.isfinite(huge).all()


def test_bf16_computes_in_fp32(relative_l2: Any) -> None:
    q, k, v = qkv(1, 2, 2, 9, 9, 16, 16, seed=10)
    for normalizer in ("sigmoid", "softpick"):
        got = ops.variant_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), normalizer=normalizer, causal=True)
        assert got.dtype == torch.bfloat16
        want = variant_attention_reference(q, k, v, normalizer=normalizer, causal=True)
        assert relative_l2(got, want) < 2e-2


def test_mutation_is_detectably_wrong() -> None:
    q, k, v = qkv(1, 2, 2, 6, 6, 8, 8, seed=11)
    for kw in ({"normalizer": "sigmoid"}, {"normalizer": "softpick"}, {"exp_values": True}, gates(1, 2, 6, 6, 12)):
        wrong = variant_as_softmax_attention(q, k, v, causal=True, **kw)
        assert (wrong - variant_attention_reference(q, k, v, causal=True, **kw)).abs().max() > 0.05, kw


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"normalizer": "relu"}, ValueError, "normalizer must be one of softmax, sigmoid, softpick"),
        ({"q_log_gates": torch.zeros(1, 2, 4)}, ValueError, "pass both q_log_gates"),
        (
            {"q_log_gates": torch.zeros(1, 2, 3), "k_log_gates": torch.zeros(1, 2, 4)},
            ValueError,
            r"q_log_gates must be \[1, 2, 4\]",
        ),
        ({"logit_bias": float("nan")}, TypeError, "logit_bias must be a finite float"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    q, k, v = qkv(1, 2, 2, 4, 4, 8, 8)
    with pytest.raises(error, match=message):
        ops.variant_attention(q, k, v, **kwargs)
