"""edifice.ops.linear_attention / gated_linear_attention: chunked == parallel == recurrent == token loop, and fla."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from edifice import ops
from edifice.ops.linear_attention import (
    gated_linear_attention_naive,
    gated_linear_attention_parallel,
    gated_linear_attention_recurrent,
    gated_linear_attention_reference,
    linear_attention_naive,
    linear_attention_parallel,
    linear_attention_recurrent,
    linear_attention_reference,
)
from edifice.testing.mutate import exclusive_linear_attention, gated_linear_attention_without_decay

TOL = 2e-5

with warnings.catch_warnings():  # fla warns that it runs on CPU; its naive functions are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.ops.gla.naive import naive_recurrent_gla
    from fla.ops.retention.naive import naive_retention
    from fla.ops.simple_gla.naive import (
        naive_chunk_simple_gla,
        naive_parallel_simple_gla,
        naive_recurrent_simple_gla,
    )

FORMS = {
    "scalar": (linear_attention_reference, linear_attention_parallel, linear_attention_recurrent),
    "vector": (
        gated_linear_attention_reference,
        gated_linear_attention_parallel,
        gated_linear_attention_recurrent,
    ),
}
NAIVE = {"scalar": linear_attention_naive, "vector": gated_linear_attention_naive}


def make(B: int, T: int, H: int, K: int, V: int, *, seed: int, vector: bool) -> list[torch.Tensor]:
    """q, k, v, a log-decay g <= 0 (GLA's logsigmoid(x) / 16 for a vector, [-1, 0) for a scalar), initial state."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    if vector:
        g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen) * 2) / 4
    else:
        g = -torch.rand(B, T, H, generator=gen)
    h0 = torch.randn(B, H, K, V, generator=gen)
    return [q, k, v, g, h0]


def packed(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]], **kw: Any) -> Callable[..., torch.Tensor]:
    """``fn(q, k, v, g, initial_state=h0)`` with the outputs and final state flattened into one tensor."""

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        o, S = fn(q, k, v, g, initial_state=h0, **kw)
        return torch.cat([o.flatten(), S.flatten()])

    return call


# name: (B, T, H, K, V, chunk_size); chunk sizes do not divide T (48: sub-chunks of 16, 7: of 1).
SHAPES = {
    "T1": (2, 1, 2, 4, 3, 64),
    "T63-chunk16": (1, 63, 2, 8, 6, 16),
    "T130-chunk48": (1, 130, 2, 6, 5, 48),
    "T63-K60-chunk7": (1, 63, 1, 60, 60, 7),
}


@pytest.mark.parametrize("decay", ["scalar", "vector"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_chunked_parallel_and_recurrent_match_the_token_loop(shape: tuple[int, ...], decay: str, agree: Any) -> None:
    """Outputs, final state and every input's gradient (the initial state's included) agree across the forms."""
    *dims, chunk = shape
    args = make(*dims, seed=sum(dims), vector=decay == "vector")
    chunked, parallel, recurrent = FORMS[decay]
    oracle = packed(NAIVE[decay])
    agree(packed(chunked, chunk_size=chunk), oracle, *args, atol=TOL, rtol=TOL)
    agree(packed(parallel), oracle, *args, atol=TOL, rtol=TOL)
    if dims[1] <= 63:  # the recurrent form is the token loop again, in a different layout: short sequences suffice
        agree(packed(recurrent), oracle, *args, atol=TOL, rtol=TOL)


def test_scalar_decay_is_a_vector_decay_constant_over_channels() -> None:
    q, k, v, g, h0 = make(2, 21, 2, 5, 4, seed=1, vector=False)
    a, Sa = ops.linear_attention(q, k, v, g, initial_state=h0, chunk_size=8)
    b, Sb = ops.gated_linear_attention(q, k, v, g[..., None].expand_as(q), initial_state=h0, chunk_size=8)
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)
    torch.testing.assert_close(Sa, Sb, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("decay", ["scalar", "vector"])
def test_chunk_size_and_splitting_do_not_change_the_result(decay: str) -> None:
    vector = decay == "vector"
    op = ops.gated_linear_attention if vector else ops.linear_attention
    q, k, v, g, h0 = make(2, 30, 2, 6, 4, seed=5, vector=vector)
    whole, S = op(q, k, v, g, initial_state=h0, chunk_size=64)
    for chunk in (1, 4, 16, 20):
        o, S2 = op(q, k, v, g, initial_state=h0, chunk_size=chunk)
        torch.testing.assert_close(o, whole, atol=TOL, rtol=TOL)
        torch.testing.assert_close(S2, S, atol=TOL, rtol=TOL)
    # The final state carries everything: continue from it after 11 steps, then one step at a time.
    first, mid = op(q[:, :11], k[:, :11], v[:, :11], g[:, :11], initial_state=h0)
    pieces = [first]
    for t in range(11, 30):
        o, mid = op(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], g[:, t : t + 1], initial_state=mid)
        pieces.append(o)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=TOL, rtol=TOL)
    torch.testing.assert_close(mid, S, atol=TOL, rtol=TOL)


def test_no_decay_is_plain_linear_attention() -> None:
    q, k, v, _, _ = make(1, 9, 2, 4, 3, seed=6, vector=False)
    o, S = ops.linear_attention(q, k, v, scale=1.0)
    mask = torch.ones(9, 9).tril()
    want = torch.einsum("bihk,bjhk,ij,bjhv->bihv", q, k, mask, v)  # o_i = Σ_{j<=i} (q_iᵀ k_j) v_j
    torch.testing.assert_close(o, want, atol=TOL, rtol=TOL)
    torch.testing.assert_close(S, torch.einsum("bjhk,bjhv->bhkv", k, v), atol=TOL, rtol=TOL)


def test_very_strong_decays_stay_finite() -> None:
    """Log-decays down to -60 per step (e^{-60·64} underflows): every exponent the chunked form takes is <= 0.

    The in-chunk cumulative sums reach -3840, so differences of them carry an absolute rounding error of about
    3840 · 6e-8 in the exponent: the tolerance is looser than elsewhere (fla's kernels share this property).
    """
    q, k, v, g, h0 = make(1, 70, 2, 4, 3, seed=8, vector=True)
    g = g * 240
    o, S = ops.gated_linear_attention(q, k, v, g, initial_state=h0)
    want, S_want = gated_linear_attention_naive(q, k, v, g, initial_state=h0)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    torch.testing.assert_close(o, want, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(S, S_want, atol=1e-3, rtol=1e-3)


def test_mutations_change_the_result() -> None:
    q, k, v, g, h0 = make(1, 9, 2, 4, 3, seed=9, vector=True)
    o, _ = ops.gated_linear_attention(q, k, v, g, initial_state=h0)
    assert not torch.allclose(gated_linear_attention_without_decay(q, k, v, g, initial_state=h0)[0], o, atol=1e-2)
    for gs in (g[..., 0], None):  # with and without a decay
        o, _ = ops.linear_attention(q, k, v, gs, initial_state=h0)
        assert not torch.allclose(exclusive_linear_attention(q, k, v, gs, initial_state=h0)[0], o, atol=1e-2)


def test_low_precision_inputs_keep_an_fp32_state(relative_l2: Any) -> None:
    q, k, v, g, h0 = make(2, 40, 2, 8, 8, seed=7, vector=True)
    want, S = ops.gated_linear_attention(q, k, v, g, initial_state=h0)
    half, S_half = ops.gated_linear_attention(*(x.bfloat16() for x in (q, k, v, g)), initial_state=h0)
    assert half.dtype == torch.bfloat16 and S_half.dtype == torch.float32
    assert relative_l2(half, want) <= 2e-2
    assert relative_l2(S_half, S) <= 2e-2


def saved_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs (the activation memory)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("decay", ["scalar", "vector"])
def test_chunked_activation_memory_grows_linearly_in_sequence_length(decay: str) -> None:
    """T = 512 -> 2048 multiplies what the chunked form saves by about 4 (a T x T form would save 16 times more)."""
    vector = decay == "vector"
    op = ops.gated_linear_attention if vector else ops.linear_attention

    def run(T: int) -> int:
        args = [x.requires_grad_() for x in make(1, T, 1, 8, 8, seed=T, vector=vector)]
        return saved_bytes(lambda: op(*args[:4], initial_state=args[4]))

    ratio = run(2048) / run(512)
    assert 3.5 < ratio < 4.5, ratio


# -- parity with flash-linear-attention's pure-PyTorch references ---------------------------------------------------
FLA_SHAPES = {"T1": (2, 1, 2, 4, 3), "T63-K60": (1, 63, 1, 60, 60), "T130": (1, 130, 1, 8, 6)}


@pytest.mark.parametrize("shape", FLA_SHAPES.values(), ids=list(FLA_SHAPES))
def test_gated_matches_fla_naive_recurrent_gla(shape: tuple[int, ...], agree: Any) -> None:
    args = make(*shape, seed=3, vector=True)

    def fla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        o, S = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
        return torch.cat([o.flatten(), S.flatten()])

    agree(packed(ops.gated_linear_attention, chunk_size=16), fla, *args, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("shape", FLA_SHAPES.values(), ids=list(FLA_SHAPES))
def test_scalar_matches_fla_naive_simple_gla(shape: tuple[int, ...], agree: Any) -> None:
    q, k, v, g, h0 = make(*shape, seed=4, vector=False)

    def recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor):
        o, S = naive_recurrent_simple_gla(q, k, v, g, scale=0.3, initial_state=h0, output_final_state=True)
        return torch.cat([o.flatten(), S.flatten()])

    def chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor):
        o, S = naive_chunk_simple_gla(q, k, v, g, h0, output_final_state=True, chunk_size=16, scale=0.3)
        return torch.cat([o.flatten(), S.flatten()])

    ours = packed(ops.linear_attention, chunk_size=16, scale=0.3)
    agree(ours, recurrent, q, k, v, g, h0, atol=TOL, rtol=TOL)
    agree(ours, chunk, q, k, v, g, h0, atol=TOL, rtol=TOL)
    # fla's parallel form takes no initial state.
    o, _ = ops.linear_attention(q, k, v, g)
    torch.testing.assert_close(o, naive_parallel_simple_gla(q, k, v, g)[0], atol=TOL, rtol=TOL)


def test_fixed_decay_matches_fla_naive_retention() -> None:
    """RetNet's γ_h = 1 - 2^{-5-h} (Sun et al. 2023, §2.2) as a constant log-decay per head."""
    q, k, v, _, _ = make(2, 37, 4, 8, 6, seed=5, vector=False)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(4.0))
    g = gamma.log().expand(2, 37, 4)
    o, _ = ops.linear_attention(q, k, v, g, chunk_size=16)
    want = naive_retention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)  # fla's is head-major
    torch.testing.assert_close(o, want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize(
    ("vector", "change", "error", "match"),
    [
        (False, {"q": torch.zeros(2, 5, 2)}, ValueError, r"q must be \[B, T, H, K\] \(4-D\)"),
        (False, {"k": torch.zeros(2, 5, 2, 3)}, ValueError, r"k must be \[B, T, H, K\] = \[2, 5, 2, 4\]"),
        (False, {"v": torch.zeros(2, 4, 2, 3)}, ValueError, r"v must be \[B, T, H, V\] with \[B, T, H\]"),
        (False, {"g": torch.zeros(2, 5, 2, 4)}, ValueError, r"g must be \[B, T, H\] \(3-D\)"),
        (True, {"g": torch.zeros(2, 5, 2)}, ValueError, r"g must be \[B, T, H, K\] \(4-D\)"),
        (True, {"g": torch.zeros(2, 5, 2, 3)}, ValueError, r"g must be \[B, T, H, K\] = \[2, 5, 2, 4\]"),
        (True, {"g": None}, TypeError, r"g must be a tensor \[B, T, H, K\]"),
        (False, {"initial_state": torch.zeros(2, 2, 3, 4)}, ValueError, r"initial_state must be \[B, H, K, V\]"),
        (False, {"scale": -1.0}, ValueError, r"scale must be a positive number"),
        (False, {"chunk_size": 0}, ValueError, r"chunk_size must be a positive int"),
        (False, {"v": torch.zeros(2, 5, 2, 3, dtype=torch.long)}, TypeError, r"v must be a floating-point"),
    ],
)
def test_invalid_arguments_raise_clear_errors(
    vector: bool, change: dict[str, Any], error: type[Exception], match: str
) -> None:
    args: dict[str, Any] = {
        "q": torch.zeros(2, 5, 2, 4),
        "k": torch.zeros(2, 5, 2, 4),
        "v": torch.zeros(2, 5, 2, 3),
        "g": torch.zeros(2, 5, 2, 4) if vector else torch.zeros(2, 5, 2),
    }
    args.update(change)
    op = ops.gated_linear_attention if vector else ops.linear_attention
    with pytest.raises(error, match=match):
        op(**args)
