"""yarn: parity with transformers' YaRN rotary scaling on a long-context Llama, the paper's equations in fp64."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import edifice
from edifice import ConfigError
from edifice.testing import signature
from edifice.testing.mutate import unmasked_sdpa
from edifice.testing.tol import FP32, SCAN, assert_close
from edifice_attention.yarn import from_llama_yarn

transformers = pytest.importorskip("transformers")

ORIGINAL = 8
YARN: dict[str, dict[str, Any]] = {
    "paper": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "rope_theta": 500.0},
    "betas-untruncated": {
        "rope_type": "yarn",
        "factor": 3.0,
        "original_max_position_embeddings": ORIGINAL,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "truncate": False,
        "rope_theta": 500.0,
    },
    "attention-factor": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": ORIGINAL,
        "attention_factor": 1.3,
        "rope_theta": 500.0,
    },
}


def _long_llama(make_llama: Callable[..., Any], variant: str) -> Any:
    # A long-context Llama: trained length 8, extended 4x to max_position_embeddings=32.
    return make_llama(rope_parameters=YARN[variant], max_position_embeddings=32, head_dim=16, num_attention_heads=2)


@signature("yarn")
@pytest.mark.parametrize("variant", list(YARN))
def test_yarn_matches_llama_with_yarn_rope(
    make_llama: Callable[..., Any], token_ids: Callable[..., torch.Tensor], variant: str
) -> None:
    hf = _long_llama(make_llama, variant)
    model = edifice.convert("transformers.LlamaForCausalLM.yarn", hf).eval()
    assert model.config.original_max_position == ORIGINAL
    ids = token_ids(length=32)  # 4x the original length
    with torch.no_grad():
        assert_close(model(input_ids=ids), hf(ids).logits, FP32, name="logits")


@signature("yarn")
def test_rotary_tables_match_transformers(make_llama: Callable[..., Any]) -> None:
    hf = _long_llama(make_llama, "paper")
    model = from_llama_yarn(hf)
    positions = torch.arange(32)[None]
    cos_hf, sin_hf = hf.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = model.layers[0].mixer.rope(positions)
    assert_close(cos, cos_hf, FP32, name="cos")
    assert_close(sin, sin_hf, FP32, name="sin")


@signature("yarn")
@pytest.mark.parametrize(("factor", "d", "base", "original"), [(4.0, 16, 500.0, 8), (16.0, 64, 10000.0, 2048)])
def test_frequencies_and_temperature_follow_the_paper_in_fp64(
    factor: float, d: int, base: float, original: int
) -> None:
    """Eqs. (17)-(22) written out in fp64: ramp over rotations r(d) = L / λ_d, interpolation by 1/s, temperature."""
    model = edifice.build(
        "yarn", d_model=2 * d, n_heads=2, factor=factor, original_max_position=original, rope_base=base
    )
    rope = model.layers[0].mixer.rope
    i = torch.arange(d // 2, dtype=torch.float64)
    theta = base ** (-2 * i / d)  # θ_d
    wavelength = 2 * math.pi / theta  # eq. (17)
    # The ramp's ends: dimensions where r = β = 32 and r = α = 1, rounded outward as in the authors' code.
    low = math.floor(d * math.log(original / (32 * 2 * math.pi)) / (2 * math.log(base)))
    high = math.ceil(d * math.log(original / (1 * 2 * math.pi)) / (2 * math.log(base)))
    low, high = max(low, 0), min(high, d - 1)
    gamma = 1 - ((i - low) / (high - low)).clamp(0, 1)  # eq. (18): 1 keeps, 0 interpolates
    expected = (1 - gamma) * theta / factor + gamma * theta  # eq. (19)-(20)
    assert_close(rope.inv_freq().double(), expected, FP32, name="θ'")
    if original / wavelength[0] > 32:  # the fastest dimension rotates more than β times in L: kept
        assert rope.inv_freq()[0].item() == pytest.approx(1.0)
    assert original / wavelength[-1] < 1  # the slowest less than α times: interpolated
    assert rope.inv_freq()[-1].item() == pytest.approx(theta[-1].item() / factor, rel=1e-6)
    # eq. (22): sqrt(1/t) = 0.1 ln(s) + 1 scales cos and sin (so q·k by 1/t).
    cos, _ = rope(torch.zeros(1, dtype=torch.long))
    assert cos[0, 0].item() == pytest.approx(0.1 * math.log(factor) + 1, rel=1e-6)


@pytest.mark.parametrize("max_len", [None, 40])
def test_step_reproduces_forward_past_the_original_length(max_len: int | None) -> None:
    torch.manual_seed(0)
    model = edifice.build("yarn", **edifice.get_spec("yarn").tiny).eval()  # original length 4
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids)
        state = model.init_state(2, max_len=max_len)
        outs = [model.step(ids[:, :3], state)[0]]
        outs += [model.step(ids[:, t : t + 1], state)[0] for t in range(3, 16)]
    assert_close(torch.cat(outs, dim=1), full, SCAN, name="step vs forward")


def test_factor_one_is_plain_rope() -> None:
    torch.manual_seed(0)
    yarn = edifice.build("yarn", d_model=32, n_heads=4, factor=1.0, original_max_position=8).eval()
    plain = edifice.build("decoder_only", d_model=32, n_heads=4).eval()
    plain.load_state_dict(yarn.state_dict())
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        assert_close(yarn(x), plain(x), FP32)


def test_bad_configs_and_checkpoints(make_llama: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="factor"):
        edifice.build("yarn", factor=0.5)
    with pytest.raises(ConfigError, match="beta_fast"):
        edifice.build("yarn", beta_fast=1.0, beta_slow=2.0)
    with pytest.raises(ConfigError, match="rope_scaling"):
        edifice.build("yarn", rope_scaling={"kind": "linear", "factor": 2.0})
    with pytest.raises(ConfigError, match="not yarn"):
        from_llama_yarn(make_llama())


def test_a_wrong_sdpa_breaks_the_parity(make_llama: Callable[..., Any], token_ids: Callable[..., torch.Tensor]) -> None:
    hf = _long_llama(make_llama, "paper")
    model = from_llama_yarn(hf).eval()
    ids = token_ids(length=32)
    with torch.no_grad():
        expected = hf(ids).logits
        with edifice.ops.swap("sdpa", unmasked_sdpa):
            assert (model(input_ids=ids) - expected).abs().max() > 1e-3
