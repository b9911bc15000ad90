"""Tests of ``huginn`` (Geiping et al. 2025): the recurrent-depth mechanism as properties, against an fp64 oracle.

The oracle below unrolls the paper's equations (§3) from the model's weights in fp64 -- RMSNorm, causal softmax
attention with RoPE (rotate-half pairing, as the model uses) and the SwiGLU MLP written out, no ``edifice.ops`` --
applying the ONE core block ``r`` times: ``e = P(x)``, ``s_i = R(e, s_{i-1}) = core(A([s_{i-1}; e]))``,
``p = C(norm(s_r))``. A generic deep stack (distinct weights per iteration), a recurrence that ignores ``e`` after the
first iteration, or a model whose decoding shares caches across iterations all fail it.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.blocks.norms import RMSNorm
from edifice.testing import signature
from edifice_recurrent.huginn import Huginn, SandwichBlock, sample_iterations

TOL = {"atol": 1e-4, "rtol": 1e-4}  # fp32 model vs fp64 oracle through ~8 unrolled layers (the scan tolerance)
VOCAB = 23

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


# -- the fp64 oracle ------------------------------------------------------------------------------------------------
def _rms(norm: Any, x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()


def _rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE on ``x [B, H, T, D]`` at positions ``0 .. T-1`` (Su et al. eq. 34, rotate-half pairing)."""
    T, D = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq  # (T, D/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _attention(block: SandwichBlock, x: torch.Tensor) -> torch.Tensor:
    attn = block.attn
    B, T, _ = x.shape
    H, D = attn.n_heads, attn.head_dim

    def heads(proj: Any) -> torch.Tensor:
        return (x @ proj.weight.double().T).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)

    base = attn.rope.base  # type: ignore[union-attr]
    q, k, v = _rope(heads(attn.q_proj), base), _rope(heads(attn.k_proj), base), heads(attn.v_proj)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D)
    return out @ attn.o_proj.weight.double().T


def _block(block: SandwichBlock, x: torch.Tensor) -> torch.Tensor:
    """``n_2(x + Attn(n_1(x)))`` then ``n_4(x̂ + MLP(n_3(x̂)))``."""
    x = _rms(block.attn_post_norm, x + _attention(block, _rms(block.attn_norm, x)))
    h = _rms(block.ffn_norm, x)
    ffn = block.ffn
    mlp = (
        F.silu(h @ ffn.gate_proj.weight.double().T) * (h @ ffn.up_proj.weight.double().T)
    ) @ ffn.down_proj.weight.double().T
    return _rms(block.ffn_post_norm, x + mlp)


def oracle(model: Huginn, inputs: torch.Tensor, r: int, s0: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's four equations in fp64 with the model's weights; ``s0`` defaults to zeros (eval init)."""
    if model.embed_tokens is not None:
        e = model.embed_tokens.weight.double()[inputs] * math.sqrt(model.config.d_model)
    else:
        proj = model.input_proj
        e = inputs.double()
        if isinstance(proj, torch.nn.Linear):
            e = e @ proj.weight.double().T + proj.bias.double()
    for block in model.prelude:
        e = _block(block, e)  # e = P(x)
    s = torch.zeros_like(e) if s0 is None else s0.double()
    for _ in range(r):  # s_i = R(e, s_{i-1}), the same block every time
        s = torch.cat([s, e], -1) @ model.adapter.weight.double().T
        for block in model.layers:
            s = _block(block, s)
    y = _rms(model.norm, s)
    for block in model.coda:
        y = _block(block, y)  # p = C(s_r)
    y = _rms(model.norm, y)
    return y @ model.lm_head.weight.double().T if model.lm_head is not None else y


# -- helpers ---------------------------------------------------------------------------------------------------------
def build(seed: int = 0, **overrides: Any) -> Huginn:
    torch.manual_seed(seed)
    options: dict[str, Any] = {
        "d_model": 16,
        "n_heads": 2,
        "d_ff": 24,
        "prelude_layers": 1,
        "n_layers": 2,
        "coda_layers": 1,
        "num_iterations": 3,
        **overrides,
    }
    model = edifice.build("huginn", **options)
    assert isinstance(model, Huginn)
    with torch.no_grad():  # larger weights than the small init, so that every layer visibly matters
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        # Random norm gains: with unit gains s_r leaves the core's last norm at unit RMS, so dropping the final norm
        # before the coda would change nothing at r > 0.
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.normal_(1.0, 0.3)
    return model.eval()


def ids(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- signature: forward and decoding against the unrolled oracle -----------------------------------------------------
@signature("huginn")
@pytest.mark.parametrize("r", [1, 3])
@pytest.mark.parametrize("tokens", [True, False], ids=["input_ids", "x"])
def test_forward_is_one_core_block_applied_r_times(r: int, tokens: bool) -> None:
    model = build(vocab_size=VOCAB if tokens else None, d_in=None if tokens else 5)
    inputs = ids(2, 7, seed=1) if tokens else randn(2, 7, 5, seed=1)
    with torch.no_grad():
        got = model(**{"input_ids" if tokens else "x": inputs}, num_iterations=r)
    torch.testing.assert_close(got.double(), oracle(model, inputs, r), **TOL)


@signature("huginn")
@pytest.mark.parametrize("max_len", [None, 8])
def test_kv_cached_steps_follow_the_unrolled_oracle(max_len: int | None) -> None:
    model = build(seed=2, vocab_size=VOCAB, num_iterations=2)
    tokens = ids(2, 8, seed=3)
    with torch.no_grad():
        state = model.init_state(2, max_len=max_len)
        pieces = [model.step(tokens[:, :3], state)[0]] + [
            model.step(tokens[:, t : t + 1], state)[0] for t in range(3, 8)
        ]
    torch.testing.assert_close(torch.cat(pieces, 1).double(), oracle(model, tokens, 2), **TOL)
    # One cache per layer instance: the core's layers have a cache at each of the r = 2 iterations, and the two
    # iterations' keys differ (their inputs s_0 and s_1 differ), so sharing one cache would be wrong.
    assert (len(state.prelude), len(state.core), len(state.core[0]), len(state.coda)) == (1, 2, 2, 1)
    first, second = state.core[0][0].keys[:, :, :8], state.core[1][0].keys[:, :, :8]
    assert first.shape == (2, 2, 8, 8) and (first - second).abs().max() > 1e-2


# -- properties of the recurrence -----------------------------------------------------------------------------------
def test_weights_are_shared_over_iterations() -> None:
    shallow, deep = build(num_iterations=1), build(num_iterations=7)
    shapes = {k: v.shape for k, v in shallow.state_dict().items()}
    assert shapes == {k: v.shape for k, v in deep.state_dict().items()}  # r adds compute, not parameters
    deep.load_state_dict(shallow.state_dict())
    x = randn(2, 6, 16, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(deep(x=x), shallow(x=x, num_iterations=7))  # r is only a loop count
        outs = [shallow(x=x, num_iterations=r) for r in (1, 2, 3)]
    assert (outs[0] - outs[1]).abs().max() > 1e-3 and (outs[1] - outs[2]).abs().max() > 1e-3


def test_zero_iterations_decode_the_initial_state() -> None:
    # r = 0: p = C(s_0). The prelude's output only enters through the adapter, so nothing of the input survives.
    model = build(seed=5, eval_state_init="normal")
    x1, x2 = randn(2, 6, 16, seed=6), randn(2, 6, 16, seed=7)
    with torch.no_grad():
        a = model(x=x1, num_iterations=0, generator=torch.Generator().manual_seed(8))
        b = model(x=x2, num_iterations=0, generator=torch.Generator().manual_seed(8))
        s0 = model.initial_state(torch.zeros(2, 6, 16), torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.double(), oracle(model, x1, 0, s0=s0), **TOL)


def test_truncated_backprop_only_differentiates_the_last_k_iterations() -> None:
    model = build(seed=9, num_iterations=3, backprop_depth=1, iteration_sampling="fixed", state_init="zero").train()
    x = randn(2, 5, 16, seed=10)
    cotangent = randn(2, 5, 16, seed=11)
    names, params = zip(*model.named_parameters(), strict=True)
    got = torch.autograd.grad((model(x=x) * cotangent).sum(), params)

    # By hand: two iterations without gradient, then one with; the injected e keeps its gradient throughout.
    e = model.prelude[0](model.input_proj(x))
    with torch.no_grad():
        s = model.core(model.core(torch.zeros_like(e), e), e)
    y = model.norm(model.coda[0](model.norm(model.core(s, e))))
    want = torch.autograd.grad((y * cotangent).sum(), params)
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=name)
    assert all(g.abs().sum() > 0 for g, n in zip(got, names, strict=True) if n.startswith("prelude."))

    model.config = model.config.replace(backprop_depth=None)  # full backprop through all three iterations
    untruncated = torch.autograd.grad((model(x=x) * cotangent).sum(), params)
    assert max(float((a - b).abs().max()) for a, b in zip(got, untruncated, strict=True)) > 1e-4


def test_gradient_checkpointing_keeps_gradients() -> None:
    model = build(seed=12, num_iterations=2, iteration_sampling="fixed", state_init="zero", backprop_depth=1).train()
    x = randn(1, 4, 16, seed=13)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        grads.append(torch.autograd.grad(model(x=x).square().sum(), list(model.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_left_padding_equals_the_sequence_alone() -> None:
    model = build(seed=14, vocab_size=VOCAB)
    tokens = ids(2, 8, seed=15)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, :3] = False
    with torch.no_grad():
        padded = model(input_ids=tokens, attention_mask=mask)
        alone = model(input_ids=tokens[1:, 3:])
    torch.testing.assert_close(padded[1:, 3:], alone, **TOL)


# -- randomness -----------------------------------------------------------------------------------------------------
def test_training_draws_come_from_the_generator() -> None:
    model = build(seed=16).train()  # s_0 ~ N(0, σ²) and r ~ log-normal Poisson
    x = randn(2, 5, 16, seed=17)

    def run(seed: int, global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        with torch.no_grad():
            return model(x=x, generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(0, 1), run(0, 2), rtol=0, atol=0)
    assert (run(0, 1) - run(1, 1)).abs().max() > 1e-3
    model.eval()  # the default eval init is zeros: deterministic without a generator
    with torch.no_grad():
        torch.testing.assert_close(model(x=x), model(x=x, generator=torch.Generator().manual_seed(3)))


@torch.no_grad()
def test_initial_state_is_a_truncated_normal() -> None:
    model = build(seed=18).train()
    sigma = model.config.state_std
    s0 = model.initial_state(torch.empty(64, 64, 16), torch.Generator().manual_seed(19))
    assert s0.abs().max() <= 3 * sigma
    # Truncation at ±3σ keeps 97.3% of the variance: std = 0.9866 σ.
    assert abs(float(s0.std()) / (0.9866 * sigma) - 1) < 0.02 and abs(float(s0.mean())) < 0.01
    model.eval()
    assert not model.initial_state(torch.empty(2, 3, 16)).any()  # eval_state_init="zero"


def test_iteration_counts_follow_the_lognormal_poisson() -> None:
    gen = torch.Generator().manual_seed(20)
    draws = torch.tensor([sample_iterations(8, gen) for _ in range(3000)], dtype=torch.float64)
    assert draws.min() >= 1
    assert abs(float(draws.mean()) - 9.0) < 0.3  # E[Poisson(e^τ)] = 8, plus 1
    # Kolmogorov-Smirnov distance to the Poisson-log-normal law of r - 1 (its pmf integrated over τ on a grid): a
    # plain Poisson(8), or round(e^τ) without the Poisson draw (same mean, too narrow: distance 0.087), fail it.
    sigma, mu = 0.5, math.log(8) - 0.5**2 / 2
    tau = torch.linspace(mu - 10 * sigma, mu + 10 * sigma, 2001, dtype=torch.float64)
    weight = torch.softmax(-0.5 * ((tau - mu) / sigma) ** 2, 0)  # N(mu, sigma) on the grid
    k = torch.arange(80, dtype=torch.float64)[:, None]
    pmf = ((k * tau - tau.exp() - torch.lgamma(k + 1)).exp() * weight).sum(1)  # Σ_τ Poisson(k; e^τ) N(τ)
    empirical = (draws[None, :] - 1 <= k).double().mean(1)
    assert float((empirical - pmf.cumsum(0)).abs().max()) < 1.63 / math.sqrt(len(draws))  # KS at the 1% level
    model = build(seed=21, num_iterations=4, backprop_depth=2).train()
    counts = {model.iterations(None, torch.Generator().manual_seed(s)) for s in range(30)}
    assert all(k == min(2, n + k) and k >= 1 for n, k in counts) and len({n + k for n, k in counts}) > 2
    assert model.eval().iterations(None) == (0, 4) and model.iterations(6) == (0, 6)


@torch.no_grad()
def test_initialisation_statistics() -> None:
    torch.manual_seed(22)
    d = 128
    model = edifice.build("huginn", d_model=d, prelude_layers=1, n_layers=1, coda_layers=1, num_iterations=8)
    std = math.sqrt(2 / (5 * d)) * 0.9866  # truncated at ±3 std
    out_std = std / math.sqrt(2 * (1 + 8 * 1 + 1))  # effective depth l_P + r l_R + l_C
    block = model.layers[0]
    assert abs(float(block.attn.q_proj.weight.std()) / std - 1) < 0.03
    assert abs(float(model.adapter.weight.std()) / std - 1) < 0.03
    assert abs(float(block.attn.o_proj.weight.std()) / out_std - 1) < 0.03
    assert abs(float(model.coda[0].ffn.down_proj.weight.std()) / out_std - 1) < 0.03
    assert block.attn_post_norm.weight.eq(1).all()


def test_config_and_input_errors() -> None:
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("huginn", d_model=30, n_heads=4)
    with pytest.raises(edifice.ConfigError, match="head_dim"):
        edifice.config("huginn", d_model=12, n_heads=4)  # head size 3 cannot rotate in pairs
    with pytest.raises(edifice.ConfigError, match="num_iterations"):
        edifice.config("huginn", num_iterations=-1)
    with pytest.raises(edifice.ConfigError, match="eval_state_init"):
        edifice.config("huginn", eval_state_init="noise")
    config = edifice.config("huginn", core_layers=3, mlp_dim=40, mean_recurrence=5, embed_dim=7)
    assert (config.n_layers, config.d_ff, config.num_iterations, config.d_in) == (3, 40, 5, 7)
    model = build(seed=23)
    with pytest.raises(ValueError, match="num_iterations"):
        model(x=randn(1, 3, 16, seed=24), num_iterations=-2)
    with pytest.raises(edifice.InputError):
        model(x=randn(1, 3, 15, seed=24))
