"""Sinusoidal (Vaswani §3.5), learned, and diffusion timestep embeddings against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from edifice.blocks.positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    TimestepEmbedding,
    timestep_features,
)


def test_sinusoidal_matches_vaswani() -> None:
    d = 6
    positions = torch.tensor([[0, 1, 5], [2, 17, 100]])
    out = SinusoidalPositionalEmbedding(d)(positions)
    assert out.shape == (2, 3, d)
    assert out.dtype == torch.float32
    for b in range(2):
        for t in range(3):
            pos = positions[b, t].item()
            for i in range(d // 2):
                angle = pos / 10000 ** (2 * i / d)
                assert out[b, t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
                assert out[b, t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    with pytest.raises(ValueError, match="dim must be even"):
        SinusoidalPositionalEmbedding(5)


def test_learned_positions_lookup_and_range_error() -> None:
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(8, 4)
    positions = torch.tensor([[0, 3, 7]])
    torch.testing.assert_close(emb(positions), emb.weight[positions])
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 8\) \(max_len=8\), got values in \[6, 8\]"):
        emb(torch.tensor([6, 7, 8]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 0\]"):
        emb(torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="must be integers"):
        emb(torch.tensor([0.0]))


def test_learned_positions_init_statistics() -> None:
    torch.manual_seed(1)
    emb = LearnedPositionalEmbedding(128, 64)
    assert emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert abs(emb.weight.mean().item()) < 2e-3


def _diffusers_features(t: torch.Tensor, dim: int, flip: bool, shift: float, scale: float = 1.0) -> torch.Tensor:
    """diffusers' get_timestep_embedding, written out element by element."""
    half = dim // 2
    rows = []
    for value in t.tolist():
        freqs = [math.exp(-math.log(10000) * j / (half - shift)) for j in range(half)]
        sin = [math.sin(scale * value * f) for f in freqs]
        cos = [math.cos(scale * value * f) for f in freqs]
        row = cos + sin if flip else sin + cos
        rows.append(row + [0.0] * (dim % 2))
    return torch.tensor(rows)


@pytest.mark.parametrize(("dim", "flip", "shift"), [(8, False, 1.0), (8, True, 0.0), (7, True, 1.0)])
def test_timestep_features_match_formula(dim: int, flip: bool, shift: float) -> None:
    t = torch.tensor([0.0, 1.0, 37.5, 999.0])
    out = timestep_features(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift, scale=0.5)
    torch.testing.assert_close(out, _diffusers_features(t, dim, flip, shift, 0.5), rtol=1e-5, atol=1e-4)


def test_timestep_embedding_is_adm_features_then_mlp() -> None:
    torch.manual_seed(2)
    emb = TimestepEmbedding(12, frequency_dim=10, out_dim=6)
    assert sorted(n for n, _ in emb.named_parameters()) == [
        "linear_1.bias",
        "linear_1.weight",
        "linear_2.bias",
        "linear_2.weight",
    ]
    t = torch.tensor([3, 250])  # integer timesteps work too
    # ADM (guided-diffusion) timestep_embedding: freqs = exp(-ln(10000) j / half); [cos(t f), sin(t f)]
    half = 5
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = t[:, None].float() * freqs
    features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    h = features @ emb.linear_1.weight.T + emb.linear_1.bias
    expected = (h * torch.sigmoid(h)) @ emb.linear_2.weight.T + emb.linear_2.bias
    torch.testing.assert_close(emb(t), expected)
    assert emb.to(torch.bfloat16)(t).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"expected timesteps \[B\]"):
        emb(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="need embed_dim > 0"):
        TimestepEmbedding(0)
