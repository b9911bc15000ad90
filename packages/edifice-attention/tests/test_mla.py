"""mla: parity with transformers' DeepSeek-V3 (attention layer and whole dense model), latent-cache decoding."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice import CheckpointError
from edifice.blocks.kv_cache import StaticKVCache
from edifice.testing import redraw_parameters, signature
from edifice.testing.mutate import unmasked_sdpa
from edifice.testing.tol import FP32, SCAN, assert_close
from edifice_attention.mla import from_deepseek_v3

transformers = pytest.importorskip("transformers")
DeepseekV3Config, DeepseekV3ForCausalLM = transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM

VOCAB = 40
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4, "rope_theta": 500.0}


def _deepseek(seed: int = 0, **overrides: Any) -> Any:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "moe_intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 12,
        "kv_lora_rank": 8,
        "qk_rope_head_dim": 4,
        "qk_nope_head_dim": 6,
        "v_head_dim": 6,
        "n_routed_experts": 4,
        "n_group": 1,
        "topk_group": 1,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 2,  # every layer dense: edifice core has no DeepSeek MoE block
        "max_position_embeddings": 16,
        **overrides,
    }
    config = DeepseekV3Config(**fields)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return redraw_parameters(DeepseekV3ForCausalLM(config).eval(), seed=seed)


def _ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits_error(hf: Any) -> float:
    model = edifice.convert("transformers.DeepseekV3ForCausalLM", hf).eval()
    ids = _ids()
    with torch.no_grad():
        return float((model(input_ids=ids) - hf(ids).logits).abs().max())


VARIANTS = {
    "q-lora-interleaved": {},
    "direct-q-rotate-half": {"q_lora_rank": None, "rope_interleave": False},
    "yarn-mscale-bias": {
        "rope_parameters": {**YARN, "mscale": 0.8, "mscale_all_dim": 0.7},
        "attention_bias": True,
    },
    "tied": {"tie_word_embeddings": True},
}


@signature("mla")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mla_matches_deepseek_v3(variant: str) -> None:
    hf = _deepseek(**VARIANTS[variant])
    model = edifice.convert("transformers.DeepseekV3ForCausalLM", hf).eval()
    ids = _ids()
    with torch.no_grad():
        assert_close(model(input_ids=ids), hf(ids).logits, FP32, name="logits")


@signature("mla")
def test_mla_attention_layer_matches_deepseek_v3_attention() -> None:
    hf = _deepseek()
    model = from_deepseek_v3(hf).eval()
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(3))
    positions = torch.arange(9)[None].expand(2, -1)
    causal = torch.full((9, 9), float("-inf")).triu(1)[None, None]  # eager attention takes an additive mask
    with torch.no_grad():
        cos, sin = hf.model.rotary_emb(x, positions)
        expected, _ = hf.model.layers[1].self_attn(x, position_embeddings=(cos, sin), attention_mask=causal)
        actual = model.layers[1].mixer(x)
    assert_close(actual, expected, FP32, name="attention output")


@pytest.mark.parametrize("absorb", [True, False], ids=["absorbed", "expanded"])
@pytest.mark.parametrize("max_len", [None, 12], ids=["dynamic", "static"])
def test_step_reproduces_forward_with_the_latent_cache(absorb: bool, max_len: int | None) -> None:
    torch.manual_seed(0)
    model = edifice.build("mla", **{**edifice.get_spec("mla").tiny, "absorb": absorb}).eval()
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids)
        state = model.init_state(2, max_len=max_len)
        outs = [model.step(ids[:, :4], state)[0]]
        outs += [model.step(ids[:, t : t + 1], state)[0] for t in range(4, 11)]
    assert_close(torch.cat(outs, dim=1), full, SCAN, name="step vs forward")
    cache = state.layers[0]
    c = model.config
    # The cache holds the latent c_KV and the shared RoPE key, never the expanded per-head keys and values.
    assert cache.keys.shape[1:] == (1, max_len or 11, c.kv_lora_rank)
    assert cache.values.shape[1:] == (1, max_len or 11, c.qk_rope_head_dim)
    if max_len is not None:
        assert isinstance(cache, StaticKVCache)


def test_cache_bytes_per_token_against_gqa() -> None:
    # DeepSeek-V2's own sizes (§2.1.4, Table 1): d_c = 4 d_h = 512, d_h^R = d_h / 2 = 64, 128 heads of 128.
    mla = edifice.build(
        "mla",
        device="meta",
        d_model=5120,
        n_heads=128,
        n_layers=1,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        q_lora_rank=1536,
    )
    assert mla.cache_bytes_per_token(torch.bfloat16) == (512 + 64) * 2
    # GQA with 8 key/value heads of 128 caches 2 * 8 * 128 numbers per token and layer: 3.6x MLA's 576.
    gqa_numbers = 2 * 8 * 128
    assert gqa_numbers / (512 + 64) == pytest.approx(3.5556, abs=1e-3)


def test_converter_errors() -> None:
    with pytest.raises(CheckpointError, match="MoE"):
        from_deepseek_v3(_deepseek(first_k_dense_replace=1))
    hf = _deepseek()
    with pytest.raises(CheckpointError, match=r"unexpected keys.*extra"):
        from_deepseek_v3((hf.config, {**hf.state_dict(), "model.extra.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match="n_kv_heads"):
        edifice.build("mla", n_kv_heads=2)
    with pytest.raises(ValueError, match="qk_rope_head_dim"):
        edifice.build("mla", qk_rope_head_dim=5)


def test_a_wrong_sdpa_breaks_the_parity() -> None:
    hf = _deepseek()
    assert _logits_error(hf) <= 1e-5
    with edifice.ops.swap("sdpa", unmasked_sdpa):
        assert _logits_error(hf) > 1e-3
