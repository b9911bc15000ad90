"""edifice.ops.delta_rule / gated_delta_rule / generalized_delta_rule: chunked WY form vs token loops and fla."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from edifice import ops
from edifice.ops.delta_rule import (
    delta_rule_naive,
    delta_rule_reference,
    gated_delta_rule_naive,
    gated_delta_rule_reference,
    generalized_delta_rule_naive,
    generalized_delta_rule_recurrent,
    generalized_delta_rule_reference,
)
from edifice.testing.mutate import delta_rule_without_erase, generalized_delta_rule_without_removal

TOL = 2e-5

with warnings.catch_warnings():  # fla warns that it runs on CPU; its naive functions are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.ops.delta_rule.naive import delta_rule_recurrence
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence


def make(
    B: int, T: int, H: int, K: int, V: int, *, seed: int, gated: bool = True, state: bool = True
) -> list[torch.Tensor | None]:
    """q, k (L2-normalised), v, beta in (0, 2), log-decay g <= 0 (or None), initial state (or None)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    beta = 2 * torch.rand(B, T, H, generator=gen)  # negative eigenvalues of I - βkkᵀ allowed (β > 1)
    g = -torch.rand(B, T, H, generator=gen) if gated else None
    h0 = torch.randn(B, H, K, V, generator=gen) if state else None
    return [q, k, v, beta, g, h0]


def packed(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]], **kw: Any) -> Callable[..., torch.Tensor]:
    """``fn(q, k, v, beta[, g], initial_state)`` with outputs and final state flattened into one tensor."""

    def call(*args: torch.Tensor) -> torch.Tensor:
        *xs, h0 = args
        o, S = fn(*xs, initial_state=h0, **kw)
        return torch.cat([o.flatten(), S.flatten()])

    return call


# name: (B, T, H, K, V, chunk_size)
SHAPES = {
    "T1": (2, 1, 2, 4, 3, 64),
    "T7-chunk3": (2, 7, 2, 5, 3, 3),
    "T63-chunk16": (1, 63, 2, 8, 6, 16),
    "T7-K60-chunk3": (1, 7, 1, 60, 60, 3),
}


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_chunked_matches_token_loop(shape: tuple[int, ...], gated: bool, agree: Any) -> None:
    *dims, chunk = shape
    q, k, v, beta, g, h0 = make(*dims, seed=sum(dims), gated=gated)
    if gated:
        args = (q, k, v, beta, g, h0)
        ref, naive = gated_delta_rule_reference, gated_delta_rule_naive
    else:
        args = (q, k, v, beta, h0)
        ref, naive = delta_rule_reference, delta_rule_naive
    agree(packed(ref, chunk_size=chunk), packed(naive), *args, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("shape", [(2, 1, 2, 4, 3), (2, 7, 2, 5, 3), (1, 63, 2, 8, 6)], ids=["T1", "T7", "T63"])
def test_gated_matches_fla_naive(shape: tuple[int, ...], agree: Any) -> None:
    q, k, v, beta, g, h0 = make(*shape, seed=3)

    def fla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor, h0: torch.Tensor):
        o, S = naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True)
        return torch.cat([o.flatten(), S.flatten()])

    agree(packed(ops.gated_delta_rule, chunk_size=16), fla, q, k, v, beta, g, h0, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("shape", [(2, 1, 2, 4, 3), (2, 7, 2, 5, 3), (1, 63, 2, 8, 6)], ids=["T1", "T7", "T63"])
def test_delta_matches_fla_naive(shape: tuple[int, ...], agree: Any) -> None:
    q, k, v, beta, _, h0 = make(*shape, seed=4, gated=False)

    def fla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        # fla's delta-rule oracle is head-major, [B, H, T, *].
        o, S = delta_rule_recurrence(*(x.transpose(1, 2) for x in (q, k, v, beta)), initial_state=h0)
        return torch.cat([o.transpose(1, 2).flatten(), S.flatten()])

    agree(packed(ops.delta_rule, chunk_size=16), fla, q, k, v, beta, h0, atol=TOL, rtol=TOL)


def test_chunk_size_and_splitting_do_not_change_the_result() -> None:
    q, k, v, beta, g, h0 = make(2, 30, 2, 6, 4, seed=5)
    assert g is not None
    whole, S = ops.gated_delta_rule(q, k, v, beta, g, initial_state=h0, chunk_size=64)
    for chunk in (1, 4, 7):
        o, S2 = ops.gated_delta_rule(q, k, v, beta, g, initial_state=h0, chunk_size=chunk)
        torch.testing.assert_close(o, whole, atol=TOL, rtol=TOL)
        torch.testing.assert_close(S2, S, atol=TOL, rtol=TOL)
    # The final state carries everything: continue from it after 11 steps.
    first, mid = ops.gated_delta_rule(q[:, :11], k[:, :11], v[:, :11], beta[:, :11], g[:, :11], initial_state=h0)
    rest, end = ops.gated_delta_rule(q[:, 11:], k[:, 11:], v[:, 11:], beta[:, 11:], g[:, 11:], initial_state=mid)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=TOL, rtol=TOL)
    torch.testing.assert_close(end, S, atol=TOL, rtol=TOL)


def test_defining_properties() -> None:
    q, k, v, beta, g, _ = make(1, 9, 2, 4, 3, seed=6, state=False)
    assert g is not None
    # Zero decay (g = 0) is the plain delta rule.
    a, Sa = ops.gated_delta_rule(q, k, v, beta, torch.zeros_like(g))
    b, Sb = ops.delta_rule(q, k, v, beta)
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)
    torch.testing.assert_close(Sa, Sb, atol=TOL, rtol=TOL)
    # With β = 1 and a unit key, the state then stores exactly v at k: Sᵀ k = v (the "delta" overwrite, eq. 1).
    ones = torch.ones_like(beta)
    _, S = ops.delta_rule(q, k, v, ones, initial_state=torch.randn(1, 2, 4, 3))
    torch.testing.assert_close(torch.einsum("bhkv,bhk->bhv", S, k[:, -1]), v[:, -1], atol=TOL, rtol=TOL)
    # Linear attention (no erase) does not satisfy it.
    _, S_lin = delta_rule_without_erase(q, k, v, ones, initial_state=torch.randn(1, 2, 4, 3))
    assert not torch.allclose(torch.einsum("bhkv,bhk->bhv", S_lin, k[:, -1]), v[:, -1], atol=1e-2)


def test_low_precision_inputs_keep_an_fp32_state(relative_l2: Any) -> None:
    q, k, v, beta, g, h0 = make(2, 40, 2, 8, 8, seed=7)
    assert g is not None and h0 is not None
    want, S = ops.gated_delta_rule(q, k, v, beta, g, initial_state=h0)
    half, S_half = ops.gated_delta_rule(*(x.bfloat16() for x in (q, k, v, beta, g)), initial_state=h0)
    assert half.dtype == torch.bfloat16 and S_half.dtype == torch.float32
    assert relative_l2(half, want) <= 2e-2
    assert relative_l2(S_half, S) <= 2e-2


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"q": torch.zeros(2, 5, 2)}, ValueError, r"q must be \[B, T, H, K\] \(4-D\)"),
        ({"k": torch.zeros(2, 5, 2, 3)}, ValueError, r"k must be \[B, T, H, K\] = \[2, 5, 2, 4\]"),
        ({"v": torch.zeros(2, 4, 2, 3)}, ValueError, r"v must be \[B, T, H, V\] with \[B, T, H\] = \[2, 5, 2\]"),
        ({"beta": torch.zeros(2, 5, 3)}, ValueError, r"beta must be \[B, T, H\] = \[2, 5, 2\]"),
        ({"g": torch.zeros(2, 5)}, ValueError, r"g must be \[B, T, H\] \(3-D\)"),
        ({"g": None}, TypeError, r"g must be a tensor \[B, T, H\]"),
        (
            {"initial_state": torch.zeros(2, 2, 3, 4)},
            ValueError,
            r"initial_state must be \[B, H, K, V\] = \[2, 2, 4, 3\]",
        ),
        ({"scale": -1.0}, ValueError, r"scale must be a positive number"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be a positive int"),
        ({"v": torch.zeros(2, 5, 2, 3, dtype=torch.long)}, TypeError, r"v must be a floating-point"),
    ],
)
def test_invalid_arguments_raise_clear_errors(change: dict[str, Any], error: type[Exception], match: str) -> None:
    args: dict[str, Any] = {
        "q": torch.zeros(2, 5, 2, 4),
        "k": torch.zeros(2, 5, 2, 4),
        "v": torch.zeros(2, 5, 2, 3),
        "beta": torch.zeros(2, 5, 2),
        "g": torch.zeros(2, 5, 2),
    }
    args.update(change)
    with pytest.raises(error, match=match):
        ops.gated_delta_rule(**args)


# -- the generalized delta rule (RWKV-7, KDA) ---------------------------------------------------------------------
def make_generalized(B: int, T: int, H: int, K: int, V: int, *, seed: int) -> list[torch.Tensor]:
    """q, k, v, RWKV-7's removal vectors a = -κ̂, b = κ̂ ⊙ rate, its log-decay in [-e^{-0.5}, 0), initial state."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    kappa = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    rate = torch.rand(B, T, H, K, generator=gen)
    g = -math.exp(-0.5) * torch.rand(B, T, H, K, generator=gen)
    h0 = torch.randn(B, H, K, V, generator=gen)
    return [q, k, v, -kappa, kappa * rate, g, h0]


def packed6(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]], **kw: Any) -> Callable[..., torch.Tensor]:
    """``fn(q, k, v, a, b, g, initial_state=h0)`` with outputs and final state flattened into one tensor."""

    def call(*args: torch.Tensor) -> torch.Tensor:
        *xs, h0 = args
        o, S = fn(*xs, initial_state=h0, **kw)
        return torch.cat([o.flatten(), S.flatten()])

    return call


# name: (B, T, H, K, V, chunk_size); chunk sizes do not divide T (48: sub-chunks of 16, 7: of 1).
GENERALIZED_SHAPES = {
    "T1": (2, 1, 2, 4, 3, 64),
    "T63-chunk16": (1, 63, 2, 8, 6, 16),
    "T130-chunk48": (1, 130, 1, 6, 5, 48),
    "T10-K60-chunk4": (1, 10, 1, 60, 60, 4),
}


@pytest.mark.parametrize("shape", GENERALIZED_SHAPES.values(), ids=list(GENERALIZED_SHAPES))
def test_generalized_forms_agree(shape: tuple[int, ...], agree: Any) -> None:
    """Chunked == recurrent == the token loop of eq. 16, on outputs, final state and every gradient."""
    *dims, chunk = shape
    args = make_generalized(*dims, seed=sum(dims))
    naive = packed6(generalized_delta_rule_naive)
    agree(packed6(generalized_delta_rule_reference, chunk_size=chunk), naive, *args, atol=TOL, rtol=TOL)
    if dims[1] <= 63:
        agree(packed6(generalized_delta_rule_recurrent), naive, *args, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("shape", [(2, 1, 2, 4, 3), (1, 37, 2, 8, 6)], ids=["T1", "T37"])
def test_generalized_matches_fla_dplr_recurrence(shape: tuple[int, ...], agree: Any) -> None:
    """fla's naive DPLR recurrence (``S = S·e^{gk} + b (aᵀ S) + k vᵀ``, head-major, scale K^-1/2) on CPU."""

    def fla(*args: torch.Tensor) -> torch.Tensor:
        *xs, h0 = args
        o, S = dplr_recurrence(*(x.transpose(1, 2) for x in xs), initial_state=h0)
        return torch.cat([o.transpose(1, 2).flatten(), S.flatten()])

    args = make_generalized(*shape, seed=8)
    agree(packed6(ops.generalized_delta_rule, chunk_size=16), fla, *args, atol=TOL, rtol=TOL)


def test_generalized_covers_the_gated_delta_rule() -> None:
    """α(I - β k kᵀ) is diag(α) + b aᵀ with a = -α k, b = β k and the written key β k (module doc)."""
    q, k, v, beta, g, h0 = make(2, 21, 2, 6, 4, seed=9)
    assert g is not None
    want, S = ops.gated_delta_rule(q, k, v, beta, g, initial_state=h0, chunk_size=8)
    k_beta = k * beta[..., None]
    decay = g[..., None].expand_as(k).contiguous()
    got, S2 = ops.generalized_delta_rule(q, k_beta, v, -k * decay.exp(), k_beta, decay, initial_state=h0, chunk_size=8)
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
    torch.testing.assert_close(S2, S, atol=TOL, rtol=TOL)


def test_generalized_removal_is_what_the_mutation_drops() -> None:
    """RWKV-7's removal with rate 1 and no decay erases what the state stored at κ̂: Sᵀκ̂ = v after the step."""
    q, _, v, a, _, g, h0 = make_generalized(1, 6, 2, 5, 3, seed=10)
    kappa = -a
    _, S = ops.generalized_delta_rule(q, kappa, v, a, kappa, torch.zeros_like(g), initial_state=h0)
    torch.testing.assert_close(torch.einsum("bhkv,bhk->bhv", S, kappa[:, -1]), v[:, -1], atol=TOL, rtol=TOL)
    _, S_lin = generalized_delta_rule_without_removal(q, kappa, v, a, kappa, torch.zeros_like(g), initial_state=h0)
    assert not torch.allclose(torch.einsum("bhkv,bhk->bhv", S_lin, kappa[:, -1]), v[:, -1], atol=1e-2)


def test_generalized_splitting_and_low_precision(relative_l2: Any) -> None:
    q, k, v, a, b, g, h0 = make_generalized(2, 30, 2, 6, 4, seed=11)
    whole, S = ops.generalized_delta_rule(q, k, v, a, b, g, initial_state=h0, chunk_size=64)
    first, mid = ops.generalized_delta_rule(*(x[:, :11] for x in (q, k, v, a, b, g)), initial_state=h0, chunk_size=4)
    rest, end = ops.generalized_delta_rule(*(x[:, 11:] for x in (q, k, v, a, b, g)), initial_state=mid, chunk_size=5)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=TOL, rtol=TOL)
    torch.testing.assert_close(end, S, atol=TOL, rtol=TOL)
    half, S_half = ops.generalized_delta_rule(*(x.bfloat16() for x in (q, k, v, a, b, g)), initial_state=h0)
    assert half.dtype == torch.bfloat16 and S_half.dtype == torch.float32
    assert relative_l2(half, whole) <= 2e-2 and relative_l2(S_half, S) <= 2e-2
    # One position (the recurrent form, a decoding step) returns o in the inputs' dtype too.
    one, S_one = ops.generalized_delta_rule(*(x[:, :1].bfloat16() for x in (q, k, v, a, b, g)), initial_state=h0)
    assert one.dtype == torch.bfloat16 and S_one.dtype == torch.float32


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"a": torch.zeros(2, 5, 2)}, ValueError, r"a must be \[B, T, H, K\] \(4-D\)"),
        ({"b": torch.zeros(2, 5, 2, 3)}, ValueError, r"b must be \[B, T, H, K\] = \[2, 5, 2, 4\]"),
        ({"g": torch.zeros(2, 5, 2)}, ValueError, r"g must be \[B, T, H, K\] \(4-D\)"),
        ({"g": None}, TypeError, r"g must be a tensor \[B, T, H, K\]"),
    ],
)
def test_generalized_invalid_arguments_raise_clear_errors(
    change: dict[str, Any], error: type[Exception], match: str
) -> None:
    args: dict[str, Any] = {name: torch.zeros(2, 5, 2, 4) for name in ("q", "k", "a", "b", "g")}
    args["v"] = torch.zeros(2, 5, 2, 3)
    args.update(change)
    with pytest.raises(error, match=match):
        ops.generalized_delta_rule(**args)
