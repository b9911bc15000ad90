"""Converters from transformers' Llama/Mistral/Mixtral: source forms, key layouts across versions, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import edifice
from edifice import CheckpointError, ConfigError
from edifice.testing.tol import FP32, assert_close
from edifice_attention.convert import from_llama, from_mixtral, llama_config


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def test_converters_are_registered() -> None:
    table = edifice.converters()
    for name in ("transformers.LlamaForCausalLM", "transformers.MistralForCausalLM", "transformers.MixtralForCausalLM"):
        assert table[name].arch == "decoder_only"


def test_config_dict_and_state_dict_pair_with_other_prefixes(
    make_llama: Callable[..., Any], token_ids: Callable[..., torch.Tensor]
) -> None:
    hf = make_llama(tie_word_embeddings=False)
    ids = token_ids()
    expected = _logits(edifice.convert("transformers.LlamaForCausalLM", hf), ids)
    # A PEFT-style prefix, and a persistent inv_freq buffer as older transformers versions saved.
    state = {f"base_model.model.{k}": v for k, v in hf.state_dict().items()}
    state["base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    model = from_llama((hf.config.to_dict(), state))
    assert_close(_logits(model, ids), expected, FP32)


def test_transformers4_rope_fields_and_overrides() -> None:
    cfg = llama_config(
        {
            "vocab_size": 10,
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "rope_theta": 500.0,
            "rope_scaling": {"type": "linear", "factor": 2.0},
            "partial_rotary_factor": 0.5,
        },
        output="last",
    )
    assert (cfg.rope_base, cfg.rope_scaling, cfg.rotary_dim, cfg.kv_heads) == (
        500.0,
        {"kind": "linear", "factor": 2.0},
        4,
        2,
    )
    assert cfg.output == "last"


def test_mixtral_transformers4_expert_layout(
    make_mixtral: Callable[..., Any], token_ids: Callable[..., torch.Tensor]
) -> None:
    hf = make_mixtral()
    ids = token_ids()
    expected = _logits(from_mixtral(hf), ids)
    state: dict[str, torch.Tensor] = {}
    for key, value in hf.state_dict().items():
        if key.endswith("mlp.experts.gate_up_proj"):
            prefix = key.removesuffix("mlp.experts.gate_up_proj") + "block_sparse_moe.experts"
            for e, w in enumerate(value):
                gate, up = w.chunk(2, dim=0)
                state[f"{prefix}.{e}.w1.weight"], state[f"{prefix}.{e}.w3.weight"] = gate, up
        elif key.endswith("mlp.experts.down_proj"):
            prefix = key.removesuffix("mlp.experts.down_proj") + "block_sparse_moe.experts"
            for e, w in enumerate(value):
                state[f"{prefix}.{e}.w2.weight"] = w
        else:
            state[key.replace("mlp.gate.", "block_sparse_moe.gate.")] = value
    assert_close(_logits(from_mixtral((hf.config, state)), ids), expected, FP32)


def test_converted_weights_do_not_alias_the_source(make_llama: Callable[..., Any]) -> None:
    hf = make_llama()
    model = from_llama(hf)
    with torch.no_grad():
        model.embed_tokens.weight.zero_()
    assert hf.model.embed_tokens.weight.abs().sum() > 0


def test_tied_checkpoint_without_lm_head(
    make_llama: Callable[..., Any], token_ids: Callable[..., torch.Tensor]
) -> None:
    hf = make_llama(tie_word_embeddings=True)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    model = from_llama((hf.config, state))
    assert model.lm_head.weight is model.embed_tokens.weight
    with torch.no_grad():
        assert_close(_logits(model, token_ids()), hf(token_ids()).logits, FP32)


def test_errors(make_llama: Callable[..., Any], make_mixtral: Callable[..., Any]) -> None:
    hf = make_llama()
    with pytest.raises(CheckpointError, match=r"unexpected keys.*extra\.weight"):
        from_llama((hf.config, {**hf.state_dict(), "model.extra.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="do not fit"):
        from_llama((hf.config, {k: v for k, v in hf.state_dict().items() if "layers.1." not in k}))
    with pytest.raises(CheckpointError, match="MixtralForCausalLM"):
        from_llama(make_mixtral())
    with pytest.raises(CheckpointError, match="num_local_experts"):
        from_mixtral(hf)
    with pytest.raises(ConfigError, match="hidden_act"):
        llama_config({**hf.config.to_dict(), "hidden_act": "gelu"})
    with pytest.raises(TypeError, match="source must be"):
        from_llama(42)
