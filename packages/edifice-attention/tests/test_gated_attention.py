"""``gated_attention``: parity with transformers' Qwen3-Next (its full-attention layers carry the G1 output gate).

A tiny random ``Qwen3NextForCausalLM`` whose layers are all full attention with dense MLPs goes through the converter
(``edifice.convert("transformers.Qwen3NextForCausalLM", ...)``); the logits must match in fp32, whole and decoded
through a static KV cache. Without the gate (a plain ``decoder_only`` on the same weights) they must not.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import mutate_op, redraw_parameters, signature

transformers = pytest.importorskip("transformers")
Qwen3NextConfig, Qwen3NextForCausalLM = transformers.Qwen3NextConfig, transformers.Qwen3NextForCausalLM
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay the first call's import at collection

TOL = 1e-5
VOCAB = 40


def tiny_qwen3_next(seed: int = 0, **overrides: Any) -> Any:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "layer_types": ["full_attention", "full_attention"],
        "num_experts": 0,
        "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        **overrides,
    }
    config = Qwen3NextConfig(**fields)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen3NextForCausalLM(config).eval()
    return redraw_parameters(model, seed=seed)


def ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def check_parity(hf: Any, tokens: torch.Tensor) -> Any:
    model: Any = edifice.convert("transformers.Qwen3NextForCausalLM", hf).eval()
    with torch.no_grad():
        want = hf(input_ids=tokens).logits
        torch.testing.assert_close(model(input_ids=tokens), want, atol=TOL, rtol=TOL)
    return model


@signature("gated_attention")
def test_matches_qwen3_next(variant_helpers: Any) -> None:
    hf = tiny_qwen3_next()
    model = check_parity(hf, ids())
    assert model.config.rotary_dim == 4 and model.layers[0].mixer.g_proj is not None
    variant_helpers.decode_matches(model, ids(seed=1), atol=TOL)


def test_signature_fails_with_unmasked_attention() -> None:
    with mutate_op("sdpa"), pytest.raises(AssertionError):
        check_parity(tiny_qwen3_next(), ids())


def test_the_gate_matters() -> None:
    # The same weights without the output gate (plain softmax attention) do not reproduce Qwen3-Next.
    hf = tiny_qwen3_next(seed=2)
    model: Any = edifice.convert("transformers.Qwen3NextForCausalLM", hf).eval()
    tokens = ids(seed=3)
    with torch.no_grad():
        want = hf(input_ids=tokens).logits
        for layer in model.layers:
            layer.mixer.g_proj = None
        assert (model(input_ids=tokens) - want).abs().max() > 1e-2


def test_gate_is_elementwise_sigmoid_of_the_input() -> None:
    torch.manual_seed(0)
    model: Any = edifice.build("gated_attention", d_model=16, n_layers=1, n_heads=2, d_ff=16).eval()
    mixer = model.layers[0].mixer
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        heads = torch.randn(1, 2, 5, 8)
        gated = mixer.finish(heads, x)
        want = mixer.o_proj(heads.transpose(1, 2).reshape(1, 5, 16) * torch.sigmoid(x @ mixer.g_proj.weight.T))
    torch.testing.assert_close(gated, want)


def test_converter_rejects_linear_attention_layers() -> None:
    hf = tiny_qwen3_next(layer_types=["linear_attention", "full_attention"])
    with pytest.raises(edifice.CheckpointError, match="linear attention"):
        edifice.convert("transformers.Qwen3NextForCausalLM", hf)
