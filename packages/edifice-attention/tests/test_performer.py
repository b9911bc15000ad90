"""Signature tests of ``performer``: FAVOR+ approaches softmax attention as random features grow; causal FAVOR+.

No pip reference ships a Performer with checkpoints (``performer-pytorch`` is not installed here), so the proof is the
defining property (fp64): with the layer's own projections, the mean error of FAVOR+ attention to exact softmax
attention, over fixed-seed feature draws, falls as the number of random features m grows (Monte-Carlo, ~1/√m), which a
generic linear-attention layer does not do. The causal form is checked against an fp64 oracle of eq. (5) (per-prefix
sums written out), and step/prefill against forward; the ``linear_attention`` mutation breaks it.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch

import edifice
from edifice.testing import mutate_op, signature
from edifice_attention.performer import FavorAttention, orthogonal_gaussian

B, T, D_MODEL, HEADS = 2, 10, 16, 2


def build(m: int, causal: bool = False, **kw: Any) -> Any:
    torch.manual_seed(0)
    model = edifice.build(
        "performer",
        d_model=D_MODEL,
        n_heads=HEADS,
        n_layers=1,
        num_features=m,
        causal=causal,
        dtype=torch.float64,
        **kw,
    ).eval()
    return model


def heads(mixer: FavorAttention, proj: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return proj(x).view(x.shape[0], x.shape[1], mixer.n_heads, mixer.head_dim).transpose(1, 2)


def exact_attention(mixer: FavorAttention, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
    q, k, v = (heads(mixer, p, x) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    scores = q @ k.transpose(-1, -2) / math.sqrt(mixer.head_dim)
    if causal:
        scores = scores.masked_fill(torch.ones(x.shape[1], x.shape[1]).triu(1).bool(), float("-inf"))
    out = scores.softmax(-1) @ v
    return mixer.o_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


def mean_error(m: int, draws: int = 12) -> float:
    mixer = build(m).layers[0].mixer
    x = torch.randn(B, T, D_MODEL, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 0.5
    with torch.no_grad():
        want = exact_attention(mixer, x)
    errors = []
    for seed in range(draws):
        mixer.redraw_features(torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            errors.append(float((mixer(x) - want).norm() / want.norm()))
    return sum(errors) / draws


@signature("performer")
def test_favor_error_to_softmax_attention_falls_as_features_grow() -> None:
    ms = (4, 16, 64, 256, 1024)
    errors = [mean_error(m) for m in ms]
    print(
        "FAVOR+ mean relative error to softmax attention by m:",
        dict(zip(ms, [f"{e:.3g}" for e in errors], strict=False)),
    )
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.25 * errors[0], errors  # Monte-Carlo rate ~ 1/√m predicts 1/16 over this range


def favor_causal_oracle(mixer: FavorAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. (5) token by token in fp64: o_i = Σ_{j<=i} φ(q_i)ᵀφ(k_j) v_j / Σ_{j<=i} φ(q_i)ᵀφ(k_j), unshifted features."""
    w = mixer.features.double()
    s = mixer.head_dim**-0.25
    q, k, v = (heads(mixer, p, x) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))

    def phi(z: torch.Tensor) -> torch.Tensor:
        z = z * s
        return torch.exp(z @ w.T - (z * z).sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])

    qf, kf = phi(q), phi(k)
    out = torch.zeros_like(v)
    for i in range(x.shape[1]):
        weights = (qf[:, :, i : i + 1] * kf[:, :, : i + 1]).sum(-1)  # (B, H, i+1)
        out[:, :, i] = (weights[..., None] * v[:, :, : i + 1]).sum(2) / weights.sum(-1, keepdim=True)
    return mixer.o_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


@signature("performer")
@pytest.mark.parametrize("length", [1, 63, 130])
def test_causal_favor_matches_the_prefix_sum_oracle_and_steps(length: int) -> None:
    model = build(32, causal=True)
    mixer = model.layers[0].mixer
    x = torch.randn(B, length, D_MODEL, generator=torch.Generator().manual_seed(length), dtype=torch.float64)
    x.requires_grad_(True)
    got = mixer(x)
    want = favor_causal_oracle(mixer, x)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    g1 = torch.autograd.grad(got.sum(), x)[0]
    g2 = torch.autograd.grad(favor_causal_oracle(mixer, x).sum(), x)[0]
    torch.testing.assert_close(g1, g2, atol=1e-8, rtol=1e-8)
    # Causal FAVOR+ is an approximation of causal softmax attention (not equal to it).
    assert not torch.allclose(got, exact_attention(mixer, x, causal=True), atol=1e-4) or length == 1
    # Decoding: a prefill then single steps reproduce forward at every position (the whole model).
    with torch.no_grad():
        full = model(x=x.detach())
        state = model.init_state(B)
        cut = min(5, length)
        pieces = [model.step(x[:, :cut].detach(), state)[0]]
        pieces += [model.step(x[:, t : t + 1].detach(), state)[0] for t in range(cut, length)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-9, rtol=1e-9)


def test_causal_signature_fails_with_the_linear_attention_mutation() -> None:
    with mutate_op("linear_attention"), pytest.raises(AssertionError):
        test_causal_favor_matches_the_prefix_sum_oracle_and_steps(63)


def test_causal_variant_is_causal() -> None:
    model = build(16, causal=True)
    x = torch.randn(1, 12, D_MODEL, dtype=torch.float64)
    later = x.clone()
    later[:, 7:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(model(x=later)[:, :7], model(x=x)[:, :7], atol=1e-12, rtol=0)


def test_orthogonal_features_are_orthogonal_in_blocks_with_gaussian_norms() -> None:
    w = orthogonal_gaussian(20, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    block = w[:8] / w[:8].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(8, dtype=torch.float64), atol=1e-12, rtol=0)
    many = orthogonal_gaussian(4096, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(float(many.square().sum(-1).mean()) - 8.0) < 0.4  # E‖w‖² = D for a Gaussian row


def test_features_are_unbiased_for_the_softmax_kernel() -> None:
    from edifice_attention.performer import favor_features

    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 4, generator=gen, dtype=torch.float64) * 0.5
    w = orthogonal_gaussian(200_000, 4, generator=gen, dtype=torch.float64)
    estimate = (favor_features(x[None], w, shift="none") * favor_features(y[None], w, shift="none")).sum()
    assert abs(float(estimate) / math.exp(float(x @ y)) - 1) < 0.01


def test_feature_redraw_interval_and_errors() -> None:
    model = build(8, feature_redraw_interval=2).train()
    mixer = model.layers[0].mixer
    before = mixer.features.clone()
    x = torch.randn(1, 4, D_MODEL, dtype=torch.float64)
    model(x=x)
    assert torch.equal(mixer.features, before)
    model(x=x)
    assert not torch.equal(mixer.features, before)
    with pytest.raises(ValueError, match="n_heads"):
        edifice.config("performer", d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="num_features"):
        edifice.config("performer", num_features=0)
    with pytest.raises(TypeError, match="causal=True"):
        build(8).init_state(1)
