"""Signature tests: parity of decoder_only, gqa and attention with independent implementations.

* decoder_only -- transformers ``LlamaForCausalLM`` (MHA/GQA/MQA, tied/untied, RoPE default/linear/dynamic/YaRN/
  Llama-3) and ``MixtralForCausalLM`` (MoE FFN, plus the load-balancing loss from its router logits);
* gqa -- transformers ``LlamaModel`` fed the same features through ``inputs_embeds``;
* attention -- PyTorch's ``nn.TransformerEncoderLayer`` (post-norm, ReLU, biases) with the sinusoidal encoding of
  Vaswani §3.5 written here, and transformers ``MistralForCausalLM`` for the sliding window.

Finally, swapping ``edifice.ops.sdpa`` for an attention that ignores its masks must break these parities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edifice
from edifice.blocks.backbone import SequenceOutput
from edifice.testing import signature
from edifice.testing.mutate import unmasked_sdpa
from edifice.testing.tol import FP32, assert_close
from edifice_attention.convert import map_llama_state_dict

ROPE_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 500.0},
    # transformers' dynamic scaling grows from max_position_embeddings whatever original_max_position_embeddings says.
    "dynamic-original": {
        "rope_type": "dynamic",
        "factor": 2.0,
        "original_max_position_embeddings": 4,
        "rope_theta": 500.0,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "rope_theta": 500.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 8,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "rope_theta": 500.0,
    },
}


def _llama_logits_error(hf: Any, ids: torch.Tensor) -> float:
    model = edifice.convert("transformers.LlamaForCausalLM", hf).eval()
    with torch.no_grad():
        expected, actual = hf(ids).logits, model(input_ids=ids)
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max())


@signature("decoder_only")
@pytest.mark.parametrize(("n_kv_heads", "tied"), [(4, False), (2, True), (1, False)], ids=["mha", "gqa-tied", "mqa"])
def test_decoder_only_matches_llama(
    make_llama: Callable[..., Any], token_ids: Callable[..., torch.Tensor], n_kv_heads: int, tied: bool
) -> None:
    hf = make_llama(num_key_value_heads=n_kv_heads, tie_word_embeddings=tied)
    model = edifice.convert("transformers.LlamaForCausalLM", hf).eval()
    assert model.config.tie_embeddings is tied
    assert model.config.kv_heads == n_kv_heads
    ids = token_ids()
    with torch.no_grad():
        assert_close(model(input_ids=ids), hf(ids).logits, FP32, name="logits")


@signature("decoder_only")
@pytest.mark.parametrize("rope", list(ROPE_VARIANTS))
def test_decoder_only_rope_scalings_match_llama(
    make_llama: Callable[..., Any], token_ids: Callable[..., torch.Tensor], rope: str
) -> None:
    # max_position_embeddings=8 < T=12, so dynamic NTK actually rescales.
    hf = make_llama(rope_parameters=ROPE_VARIANTS[rope], max_position_embeddings=8, attention_bias=True)
    assert _llama_logits_error(hf, token_ids()) <= 1e-5


@signature("decoder_only")
def test_decoder_only_moe_matches_mixtral(
    make_mixtral: Callable[..., Any], token_ids: Callable[..., torch.Tensor]
) -> None:
    hf = make_mixtral(router_aux_loss_coef=0.02)
    model = edifice.convert("transformers.MixtralForCausalLM", hf).eval()
    ids = token_ids()
    with torch.no_grad():
        reference = hf(ids, output_router_logits=True)
        out = model(input_ids=ids)
    assert isinstance(out, SequenceOutput)
    assert out.logits is not None
    assert out.aux_loss is not None
    assert_close(out.logits, reference.logits, FP32, name="logits")
    # Switch eq. (4) per layer from transformers' router logits, counted once per chosen expert, summed over layers.
    expected_aux = torch.zeros(())
    for logits in reference.router_logits:  # (B*T, E) per layer
        probs = logits.float().softmax(-1)
        chosen = F.one_hot(probs.topk(2, dim=-1).indices, 4).sum(1).float()  # (n, E)
        expected_aux = expected_aux + 4 * (chosen.mean(0) * probs.mean(0)).sum()
    assert_close(out.aux_loss, 0.02 * expected_aux, FP32, name="aux_loss")


@signature("gqa")
@pytest.mark.parametrize("n_kv_heads", [2, 1], ids=["gqa", "mqa"])
def test_gqa_matches_llama_model_on_features(make_llama: Callable[..., Any], n_kv_heads: int) -> None:
    hf = make_llama(num_key_value_heads=n_kv_heads).model  # LlamaModel: keys without the "model." prefix
    model = edifice.build("gqa", d_model=32, n_heads=4, n_kv_heads=n_kv_heads, d_ff=48, rope_base=10000.0).eval()
    weights = map_llama_state_dict(hf.state_dict(), model.config)  # type: ignore[arg-type]
    weights.pop("embed_tokens.weight")  # gqa takes features x, fed to transformers as inputs_embeds
    model.load_state_dict(weights)
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(model(x), hf(inputs_embeds=x).last_hidden_state, FP32, name="hidden")


def _sinusoid(T: int, d: int) -> torch.Tensor:
    """Vaswani §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    pe = torch.zeros(T, d, dtype=torch.float64)
    for pos in range(T):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            pe[pos, 2 * i], pe[pos, 2 * i + 1] = math.sin(angle), math.cos(angle)
    return pe.float()


def _torch_reference(model: nn.Module, window: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same weights in ``nn.TransformerEncoderLayer`` (post-norm, ReLU) under a causal (windowed) mask."""
    c = model.config
    layers = []
    for block in model.layers:
        ref = nn.TransformerEncoderLayer(
            c.d_model, c.n_heads, c.ffn_hidden, dropout=0.0, activation="relu", batch_first=True, norm_first=False
        )
        att, ffn = block.mixer, block.ffn
        with torch.no_grad():
            ref.self_attn.in_proj_weight.copy_(torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]))
            ref.self_attn.in_proj_bias.copy_(torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]))
            ref.self_attn.out_proj.load_state_dict(att.o_proj.state_dict())
            ref.linear1.load_state_dict(ffn.up_proj.state_dict())
            ref.linear2.load_state_dict(ffn.down_proj.state_dict())
            ref.norm1.load_state_dict(block.mixer_norm.state_dict())
            ref.norm2.load_state_dict(block.ffn_norm.state_dict())
        layers.append(ref.eval())

    def run(h: torch.Tensor) -> torch.Tensor:
        T = h.shape[1]
        i, j = torch.arange(T)[:, None], torch.arange(T)[None]
        blocked = (j > i) | ((i - j >= window) if window is not None else torch.zeros(T, T, dtype=torch.bool))
        h = h + _sinusoid(T, c.d_model)
        for layer in layers:
            h = layer(h, src_mask=blocked)  # True = not allowed to attend
        return h

    return run


@signature("attention")
@pytest.mark.parametrize("window", [None, 3])
def test_attention_matches_torch_transformer_layers(window: int | None) -> None:
    torch.manual_seed(0)
    model = edifice.build("attention", d_model=32, n_heads=4, d_in=12, window=window).eval()
    x = torch.randn(2, 9, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = _torch_reference(model, window)(model.input_proj(x))
        assert_close(model(x), reference, FP32, name="hidden")


@signature("attention")
def test_attention_token_path_scales_embeddings_and_ties_the_head() -> None:
    torch.manual_seed(1)
    model = edifice.build("attention", d_model=32, n_heads=4, vocab_size=50, tie_embeddings=True).eval()
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    E = model.embed_tokens.weight
    with torch.no_grad():
        h = _torch_reference(model, None)(E[ids] * math.sqrt(32))  # §3.4: embeddings times sqrt(d_model)
        assert_close(model(input_ids=ids), h @ E.T, FP32, name="logits")  # §3.4: shared pre-softmax weights


@signature("attention")
def test_attention_window_matches_mistral(
    make_mistral: Callable[..., Any], token_ids: Callable[..., torch.Tensor]
) -> None:
    hf = make_mistral(num_key_value_heads=4, sliding_window=3)
    config = edifice.config(
        "attention",
        vocab_size=40,
        d_model=32,
        n_heads=4,
        d_ff=48,
        window=3,
        ffn="swiglu",
        norm="rmsnorm",
        norm_eps=hf.config.rms_norm_eps,
        norm_position="pre",
        positional="rope",
        rope_base=float(hf.config.rope_parameters["rope_theta"]),
        attention_bias=False,
        ffn_bias=False,
        scale_embeddings=False,
    )
    model = edifice.build(config).eval()
    model.load_state_dict(map_llama_state_dict(hf.state_dict(), config))  # type: ignore[arg-type]
    ids = token_ids(length=10)
    with torch.no_grad():
        assert_close(model(input_ids=ids), hf(ids).logits, FP32, name="logits")


def test_a_wrong_sdpa_breaks_the_parity(make_llama: Callable[..., Any], token_ids: Callable[..., torch.Tensor]) -> None:
    """Mutation check: attention that ignores causality and masks must fail the signature tests."""
    hf, ids = make_llama(), token_ids()
    assert _llama_logits_error(hf, ids) <= 1e-5
    with edifice.ops.swap("sdpa", unmasked_sdpa):
        assert _llama_logits_error(hf, ids) > 1e-3
        with pytest.raises(AssertionError):
            test_attention_matches_torch_transformer_layers(window=3)
