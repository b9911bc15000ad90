"""dual_chunk_attention: fp64 oracle of the per-pair position indices, RoPE equality within a chunk, decoding."""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice import ConfigError
from edifice.testing import signature
from edifice.testing.mutate import unmasked_sdpa
from edifice.testing.tol import FP32, SCAN, assert_close

TINY = edifice.get_spec("dual_chunk_attention").tiny


def _rotate(x: torch.Tensor, position: float, base: float) -> torch.Tensor:
    """RoFormer eq. 34 in the rotate-half layout for one vector ``x [D]`` at one position, in fp64."""
    D = x.shape[-1]
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angle = torch.cat([position * theta, position * theta])
    half = torch.cat([-x[D // 2 :], x[: D // 2]])
    return x * angle.cos() + half * angle.sin()


def _oracle(mixer: torch.nn.Module, x: torch.Tensor, s: int, w: int, base: float) -> torch.Tensor:
    """An et al. §3: per pair (i, j) the query index is i mod s (same chunk), min(i mod s + s, s + w) (previous
    chunk) or min(2s - 1, s + w) (earlier chunks); the key index is j mod s; one causal softmax over all j <= i."""
    B, T, _ = x.shape
    H, Hk, D = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
    q = mixer.q_proj(x).view(B, T, H, D)
    k = mixer.k_proj(x).view(B, T, Hk, D)
    v = mixer.v_proj(x).view(B, T, Hk, D)
    out = torch.zeros(B, T, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hk)
            for i in range(T):
                scores = []
                for j in range(i + 1):
                    gap = i // s - j // s
                    p_q = i % s if gap == 0 else min(i % s + s, s + w) if gap == 1 else min(2 * s - 1, s + w)
                    qi, kj = _rotate(q[b, i, h], p_q, base), _rotate(k[b, j, g], j % s, base)
                    scores.append(float(qi @ kj) / math.sqrt(D))
                p = torch.tensor(scores, dtype=torch.float64).softmax(0)
                out[b, i, h] = (p[:, None] * v[b, : i + 1, g]).sum(0)
    return mixer.o_proj(out.reshape(B, T, H * D))


@signature("dual_chunk_attention")
@pytest.mark.parametrize(("s", "w", "T"), [(4, 2, 13), (3, 1, 11), (5, 4, 16)])
def test_matches_the_papers_position_indices_in_fp64(s: int, w: int, T: int) -> None:
    torch.manual_seed(0)
    model = edifice.build(
        "dual_chunk_attention", d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_in=6, chunk_size=s,
        local_window=w, rope_base=50.0,
    ).double().eval()  # fmt: skip
    mixer = model.layers[0].mixer
    x = torch.randn(2, T, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(mixer(x), _oracle(mixer, x, s, w, 50.0), FP32, name="attention output")


@signature("dual_chunk_attention")
def test_within_one_chunk_it_equals_rope_attention_and_beyond_it_differs() -> None:
    torch.manual_seed(0)
    dca = edifice.build("dual_chunk_attention", **TINY).eval()
    plain = edifice.build("decoder_only", **{k: v for k, v in TINY.items() if k not in ("chunk_size", "local_window")})
    plain.load_state_dict(dca.state_dict())
    plain.eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        s = TINY["chunk_size"]
        assert_close(dca(input_ids=ids[:, :s]), plain(input_ids=ids[:, :s]), FP32, name="T <= chunk_size")
        assert (dca(input_ids=ids) - plain(input_ids=ids)).abs().max() > 1e-4


@pytest.mark.parametrize("max_len", [None, 70])
def test_step_reproduces_forward_at_4x_training_length(max_len: int | None) -> None:
    torch.manual_seed(0)
    model = edifice.build("dual_chunk_attention", **TINY).eval()
    T = 4 * 16  # 4x the tiny config's sequence length; the largest relative position stays s + w = 6
    ids = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(input_ids=ids)
        state = model.init_state(2, max_len=max_len)
        outs = [model.step(ids[:, :9], state)[0]]
        outs += [model.step(ids[:, t : t + 1], state)[0] for t in range(9, T)]
    assert torch.isfinite(full).all()
    assert_close(torch.cat(outs, dim=1), full, SCAN, name="step vs forward")


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        edifice.build("dual_chunk_attention", chunk_size=0)
    with pytest.raises(ConfigError, match="window"):
        edifice.build("dual_chunk_attention", window=4)


def test_a_wrong_sdpa_breaks_the_oracle() -> None:
    with edifice.ops.swap("sdpa", unmasked_sdpa), pytest.raises(AssertionError):
        test_matches_the_papers_position_indices_in_fp64(4, 2, 9)
