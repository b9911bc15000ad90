"""RoPE against transformers' own RoPE (default, linear, dynamic NTK, YaRN, Llama 3) and a complex-number formula."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from edifice.blocks.rope import RopeScaling, RotaryEmbedding, apply_rotary

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb  # noqa: E402

HEAD_DIM = 16


def _hf_rope(rope_parameters: dict[str, Any], max_position_embeddings: int = 64) -> LlamaRotaryEmbedding:
    config = transformers.LlamaConfig(
        hidden_size=32,
        num_attention_heads=2,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_theta": 500.0, **rope_parameters},
    )
    return LlamaRotaryEmbedding(config)


SCALINGS: dict[str, dict[str, Any]] = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 2.5},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn_betas": {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 32,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
    },
    "yarn_deepseek": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 16,
        "mscale": 0.707,
        "mscale_all_dim": 1.0,
    },
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 32,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },
}


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_cos_sin_match_transformers(name: str) -> None:
    params = SCALINGS[name]
    reference = _hf_rope(params)
    ours = RotaryEmbedding(HEAD_DIM, base=500.0, scaling=params)
    positions = torch.tensor([[0, 1, 2, 7, 40, 63], [5, 9, 11, 3, 0, 62]])
    cos_ref, sin_ref = reference(torch.zeros(1), positions)
    cos, sin = ours(positions)
    assert cos.dtype == torch.float32
    assert cos.shape == (2, 6, HEAD_DIM)
    torch.testing.assert_close(cos, cos_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sin, sin_ref, rtol=1e-5, atol=1e-5)
    assert ours.attention_scaling == pytest.approx(reference.attention_scaling)


def test_dynamic_ntk_matches_transformers_frequencies() -> None:
    params = {"rope_type": "dynamic", "factor": 2.0}
    config = _hf_rope(params, max_position_embeddings=32).config
    ours = RotaryEmbedding(HEAD_DIM, base=500.0, scaling={**params, "original_max_position_embeddings": 32})
    for length in (20, 32, 50, 100):
        expected, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, torch.device("cpu"), seq_len=length)
        positions = torch.arange(length)
        torch.testing.assert_close(ours.inv_freq(seq_len=torch.tensor(length)), expected, rtol=1e-6, atol=0)
        cos, _ = ours(positions)  # the length comes from the positions themselves
        angles = positions[:, None].float() * expected
        torch.testing.assert_close(cos, torch.cat((angles, angles), -1).cos(), rtol=1e-5, atol=1e-5)


def test_apply_rotary_matches_transformers() -> None:
    torch.manual_seed(0)
    ours = RotaryEmbedding(HEAD_DIM, base=500.0, scaling=SCALINGS["yarn"])
    positions = torch.arange(7).expand(2, 7)
    q, k = torch.randn(2, 3, 7, HEAD_DIM), torch.randn(2, 3, 7, HEAD_DIM)
    cos, sin = ours(positions)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(apply_rotary(q, cos, sin), q_ref)
    torch.testing.assert_close(apply_rotary(k, *ours(positions[0])), k_ref)  # [T] positions broadcast over B


def _complex_rope(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, base: float) -> torch.Tensor:
    """RoFormer eq. 34 as complex products: pair (i, i + R/2) is the complex z_i, rotated by e^{i m θ_i}."""
    half = rotary_dim // 2
    theta = torch.tensor([base ** (-2 * i / rotary_dim) for i in range(half)], dtype=torch.float64)
    z = torch.complex(x[..., :half].double(), x[..., half:rotary_dim].double())
    z = z * torch.polar(torch.ones((), dtype=torch.float64), positions.double()[:, None] * theta)  # (T, half) broadcast
    return torch.cat((z.real, z.imag, x[..., rotary_dim:].double()), dim=-1).float()


@pytest.mark.parametrize("rotary_dim", [None, 8, 2])
def test_rotation_matches_complex_formula(rotary_dim: int | None) -> None:
    torch.manual_seed(1)
    rope = RotaryEmbedding(12, rotary_dim=rotary_dim, base=100.0)
    x = torch.randn(2, 2, 5, 12)
    positions = torch.tensor([0, 3, 4, 9, 31])
    expected = _complex_rope(x, positions, rotary_dim or 12, 100.0)
    torch.testing.assert_close(apply_rotary(x, *rope(positions)), expected, rtol=1e-5, atol=1e-5)


def test_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(2)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rotary(q, *rope(torch.tensor([m])))
        kn = apply_rotary(k, *rope(torch.tensor([n])))
        return (qm * kn).sum()

    torch.testing.assert_close(score(5, 2), score(103, 100))
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_ntk_and_linear_against_formulas() -> None:
    s, d, base = 4.0, 8, 10000.0
    ntk = RotaryEmbedding(d, scaling=RopeScaling("ntk", factor=s)).inv_freq()
    new_base = base * s ** (d / (d - 2))  # YaRN paper eq. 16
    torch.testing.assert_close(ntk, torch.tensor([new_base ** (-2 * i / d) for i in range(d // 2)]))
    linear = RotaryEmbedding(d, scaling={"kind": "linear", "factor": s}).inv_freq()
    torch.testing.assert_close(linear, torch.tensor([base ** (-2 * i / d) / s for i in range(d // 2)]))


def test_yarn_temperature_and_ramp_ends() -> None:
    rope = RotaryEmbedding(HEAD_DIM, scaling=RopeScaling("yarn", factor=16.0, original_max_position_embeddings=64))
    assert rope.attention_scaling == pytest.approx(0.1 * math.log(16.0) + 1)  # YaRN eq. 22
    inv = rope.inv_freq()
    plain = RotaryEmbedding(HEAD_DIM).inv_freq()
    # Highest frequency is extrapolated (kept), lowest interpolated (divided by s).
    assert inv[0] == pytest.approx(plain[0].item())
    assert inv[-1] == pytest.approx(plain[-1].item() / 16.0)
    assert RopeScaling(attention_factor=2.0).attention_scaling() == 1.0  # only YaRN scales cos/sin


def test_dtype_meta_and_errors() -> None:
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 2, 3, 8)
    cos, sin = rope(torch.arange(3))
    y = apply_rotary(x.bfloat16(), cos, sin)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), apply_rotary(x, cos, sin), rtol=2e-2, atol=2e-2)
    meta_cos, _ = rope(torch.arange(3, device="meta"))
    assert meta_cos.is_meta
    assert meta_cos.shape == (3, 8)
    rope.reset_parameters()  # nothing to do, but present
    with pytest.raises(ValueError, match=r"rotary_dim must be even and in \(0, head_dim=8\]"):
        RotaryEmbedding(8, rotary_dim=5)
    with pytest.raises(ValueError, match=r"unknown kind 'yarm'.*Did you mean 'yarn'"):
        RotaryEmbedding(8, scaling={"type": "yarm", "factor": 2.0})
    with pytest.raises(ValueError, match="unknown key"):
        RopeScaling.parse({"rope_type": "linear", "factr": 2.0})
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        RopeScaling("yarn", factor=2.0)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        RopeScaling("linear", factor=0.5)
    with pytest.raises(TypeError):
        RopeScaling.parse(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"positions must be a real tensor \[T\] or \[B, T\]"):
        rope(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected x \[B, H, T, D\]"):
        apply_rotary(torch.randn(3, 8), cos, sin)
    with pytest.raises(ValueError, match="need T=4"):
        apply_rotary(torch.randn(1, 1, 4, 8), cos, sin)
