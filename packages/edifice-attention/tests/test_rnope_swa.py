"""rnope_swa: parity with transformers' Cohere2 (parallel blocks, NoPE global + RoPE SWA layers) and Mistral."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import edifice
from edifice import ConfigError
from edifice.blocks.kv_cache import SlidingWindowKVCache, StaticKVCache
from edifice.testing import redraw_parameters, signature
from edifice.testing.mutate import unmasked_sdpa
from edifice.testing.tol import FP32, SCAN, assert_close
from edifice_attention.convert import map_llama_state_dict
from edifice_attention.rnope_swa import from_cohere2

transformers = pytest.importorskip("transformers")
Cohere2Config, Cohere2ForCausalLM = transformers.Cohere2Config, transformers.Cohere2ForCausalLM
VOCAB = 40


def _cohere2(seed: int = 0, **overrides: Any) -> Any:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": 3,
        "max_position_embeddings": 16,
        "logit_scale": 0.5,
        "eos_token_id": None,
        "bos_token_id": None,
        "pad_token_id": None,
        **overrides,
    }
    config = Cohere2Config(**fields)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return redraw_parameters(Cohere2ForCausalLM(config).eval(), seed=seed)


def _ids(length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(0))


VARIANTS = {
    "1-global-in-2": {"sliding_window_pattern": 2},
    "1-global-in-4-bias": {"sliding_window_pattern": 4, "attention_bias": True, "num_hidden_layers": 4},
    "mqa-theta": {"sliding_window_pattern": 3, "num_key_value_heads": 1, "rope_parameters": {"rope_theta": 500.0}},
}


@signature("rnope_swa")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rnope_swa_matches_cohere2(variant: str) -> None:
    hf = _cohere2(**VARIANTS[variant])
    model = edifice.convert("transformers.Cohere2ForCausalLM", hf).eval()
    assert model.config.parallel_block and not model.config.norm_bias
    ids = _ids()
    with torch.no_grad():
        assert_close(model(input_ids=ids), hf(ids).logits, FP32, name="logits")


@signature("rnope_swa")
def test_sequential_local_layers_match_mistral(make_mistral: Callable[..., Any]) -> None:
    """With no global layer in the stack every layer is Mistral's RoPE + sliding window (sequential pre-norm)."""
    hf = make_mistral(sliding_window=3)
    model = edifice.build(
        "rnope_swa", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, vocab_size=VOCAB, window=3,
        global_every=3, norm="rmsnorm", norm_eps=hf.config.rms_norm_eps,
    ).eval()  # fmt: skip
    model.load_state_dict(map_llama_state_dict(hf.state_dict(), model.config))  # type: ignore[arg-type]
    ids = _ids()
    with torch.no_grad():
        assert_close(model(input_ids=ids), hf(ids).logits, FP32, name="logits")


@signature("rnope_swa")
def test_global_layers_carry_no_position_information() -> None:
    """NoPE: a global layer's output at the last position is invariant to permuting the tokens before it."""
    torch.manual_seed(0)
    model = edifice.build("rnope_swa", d_model=32, n_layers=1, n_heads=4, d_in=8, window=2, global_every=1).eval()
    x = torch.randn(1, 9, 8)
    shuffled = torch.cat([x[:, torch.randperm(8)], x[:, -1:]], dim=1)
    with torch.no_grad():
        assert_close(model(shuffled)[:, -1], model(x)[:, -1], FP32, name="last position")
        # The global layer is exactly causal softmax attention on unrotated q, k (Vaswani eq. 1, no positions).
        mixer, h = model.layers[0].mixer, model.layers[0].mixer_norm(model.input_proj(x))
        q, k, v = (proj(h).view(1, 9, 4, 8).transpose(1, 2) for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
        scores = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), -torch.inf)
        expected = mixer.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 9, 32))
        assert_close(mixer(h), expected, FP32, name="NoPE causal attention")
        local = edifice.build("rnope_swa", d_model=32, n_layers=1, n_heads=4, d_in=8, window=9, global_every=2).eval()
        local.load_state_dict(model.state_dict())
        assert (local(shuffled)[:, -1] - local(x)[:, -1]).abs().max() > 1e-4  # RoPE layers do see positions


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_step_with_ring_caches_reproduces_forward_at_4x_length(parallel: bool) -> None:
    torch.manual_seed(0)
    spec = edifice.get_spec("rnope_swa")
    model = edifice.build("rnope_swa", **{**spec.tiny, "parallel_block": parallel}).eval()
    T = 4 * 16  # 4x the tiny config's sequence length
    ids = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids)
        state = model.init_state(2, max_len=T)
        outs = [model.step(ids[:, :7], state)[0]]
        outs += [model.step(ids[:, t : t + 1], state)[0] for t in range(7, T)]
    assert torch.isfinite(full).all()
    assert_close(torch.cat(outs, dim=1), full, SCAN, name="step vs forward")
    local, global_ = state.layers
    assert isinstance(local, SlidingWindowKVCache) and local.window == 4  # constant size whatever T
    assert isinstance(global_, StaticKVCache) and global_.max_len == T


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="window"):
        edifice.build("rnope_swa", window=None)
    with pytest.raises(ConfigError, match="global_every"):
        edifice.build("rnope_swa", global_every=0)
    with pytest.raises(ConfigError, match="layer_types"):
        from_cohere2(
            _cohere2(layer_types=["full_attention", "sliding_attention", "sliding_attention", "full_attention"])
        )


def test_a_wrong_sdpa_breaks_the_parity() -> None:
    hf = _cohere2(sliding_window_pattern=2)
    model = from_cohere2(hf).eval()
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        with edifice.ops.swap("sdpa", unmasked_sdpa):
            assert (model(input_ids=ids) - expected).abs().max() > 1e-3
