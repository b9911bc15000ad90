"""Signature test: jamba against transformers' ``JambaForCausalLM`` (eager attention, pure-PyTorch Mamba path).

Weights are mapped by the registered converter. The tiny reference has one Mamba layer with a dense SwiGLU and one
attention layer with a 4-expert top-2 MoE, so the schedule, the inner Δ/B/C norms, the MoE routing (raw top-k
weights) and GQA attention without positions all have to be right. The check covers a full forward, a left-padded
batch and prefill + token-by-token decoding against the reference's full forward at every position (CI also runs it
under ``--edifice-mutate`` of each op it calls).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import redraw_parameters, signature
from edifice.testing.tol import FP32, assert_close
from edifice_ssm.jamba import Jamba

transformers = pytest.importorskip("transformers")
# Resolve the lazily imported classes once at collection, not inside a timed test.
HFJambaConfig, HFJambaForCausalLM, HFJambaModel = (
    transformers.JambaConfig,
    transformers.JambaForCausalLM,
    transformers.JambaModel,
)

VOCAB = 40


def _hf(seed: int = 0, cls: Any = None, **overrides: Any) -> Any:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "mamba_d_state": 4,
        "mamba_d_conv": 3,
        "mamba_expand": 2,
        "mamba_dt_rank": 3,
        "mamba_proj_bias": True,
        "use_cache": False,
        "attn_implementation": "eager",
        **overrides,
    }
    torch.manual_seed(seed)
    model = (cls or HFJambaForCausalLM)(HFJambaConfig(**fields)).eval()
    with torch.no_grad():
        # transformers' N(0, 0.02) init leaves the Mamba branch ~1e-6 of the logits; unit-variance weights, random
        # gains, skips and Δ biases make every part (norms, D, the Δ range, conv, scan, router) observable.
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", ".D")):
                p.uniform_(0.5, 1.5)
            elif name.endswith("dt_proj.bias"):
                p.uniform_(-4.0, 0.5)
            elif name.endswith("embed_tokens.weight"):
                p.normal_(0.0, 1.0)
            elif p.dim() >= 2 and not name.endswith("A_log"):
                p.normal_(0.0, p.shape[-1] ** -0.5)  # fan-in scaled (conv1d: [E, 1, K])
    # Then noise on every parameter, biases included: a zero in_proj bias would hide a leak into padded positions.
    return redraw_parameters(model, seed=seed)


def _ids(batch: int = 2, length: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@signature("jamba")
def test_jamba_matches_transformers() -> None:
    hf = _hf(seed=1)
    model = edifice.convert("transformers.JambaForCausalLM", hf).eval()
    assert isinstance(model, Jamba)
    ids = _ids()
    with torch.no_grad():
        want = hf(ids).logits  # (B, T, V)
        got = model(input_ids=ids)
        assert_close(got.logits, want, FP32, name="jamba: forward vs transformers")
        # Left padding: the valid positions equal the unpadded run.
        pad = torch.zeros(2, 3, dtype=torch.long)
        mask = torch.cat([torch.zeros(2, 3, dtype=torch.bool), torch.ones_like(ids, dtype=torch.bool)], 1)
        padded = model(input_ids=torch.cat([pad, ids], 1), attention_mask=mask)
        assert_close(padded.logits[:, 3:], want, FP32, name="jamba: left-padded vs transformers")
        # Prefill 4 tokens, then decode one at a time (static KV cache): each output equals the reference's.
        state = model.init_state(2, max_len=ids.shape[1])
        outs = [model.step(ids[:, :4], state)[0].logits]
        outs += [model.step(ids[:, t : t + 1], state)[0].logits for t in range(4, ids.shape[1])]
        assert_close(torch.cat(outs, 1), want, FP32, name="jamba: prefill + decode vs transformers")


def test_jamba_model_hidden_states_and_a_dense_schedule_match() -> None:
    # transformers' JambaModel (no head, no MoE, 3 layers with attention in the middle): tied-head logits agree.
    hf = _hf(seed=2, cls=HFJambaModel, num_hidden_layers=3, num_experts=1, attn_layer_period=3, mamba_dt_rank="auto")
    model = edifice.convert("transformers.JambaModel", hf).eval()
    assert model.config.time_step_rank == 1 and model.config.tie_embeddings
    assert not model.returns_aux_loss
    ids = _ids(seed=3)
    with torch.no_grad():
        want = hf(ids).last_hidden_state @ hf.embed_tokens.weight.T
        assert_close(model(input_ids=ids), want, FP32)


def test_converter_accepts_a_config_dict_and_reports_unknown_keys() -> None:
    hf = _hf(seed=4)
    model = edifice.convert("transformers.JambaForCausalLM", (hf.config.to_dict(), hf.state_dict())).eval()
    ids = _ids(seed=5)
    with torch.no_grad():
        assert_close(model(input_ids=ids).logits, hf(ids).logits, FP32)
    bad = {**hf.state_dict(), "model.layers.0.mamba.unexpected": torch.zeros(1)}
    with pytest.raises(edifice.CheckpointError, match="unexpected"):
        edifice.convert("transformers.JambaForCausalLM", (hf.config, bad))
    with pytest.raises(edifice.ConfigError, match="hidden_act"):
        edifice.convert("transformers.JambaForCausalLM", ({**hf.config.to_dict(), "hidden_act": "gelu"}, {}))
    with pytest.raises(TypeError, match="source"):
        edifice.convert("transformers.JambaForCausalLM", object())


def test_converted_weights_are_copies() -> None:
    hf = _hf(seed=6)
    model = edifice.convert("transformers.JambaForCausalLM", hf)
    with torch.no_grad():
        model.layers[0].mixer.A_log.add_(1.0)
        model.layers[1].ffn.experts[0].gate_proj.weight.add_(1.0)
    assert not torch.equal(model.layers[0].mixer.A_log, hf.model.layers[0].mamba.A_log)
    assert not torch.equal(
        model.layers[1].ffn.experts[0].gate_proj.weight, hf.model.layers[1].feed_forward.experts.gate_up_proj[0, :24]
    )
