"""Signature test: zamba against transformers' ``ZambaForCausalLM`` (eager attention, pure-PyTorch Mamba path).

Weights are mapped by the registered converter. The tiny reference has four layers, two of them hybrid, so the
shared block is applied twice with one set of weights and two KV caches, reads ``[h, embeddings]``, and its output
enters the next Mamba block through that layer's own projection; its Mamba mixers have two heads (own x_proj,
dt_proj, B, C). The check covers a full forward, a left-padded batch and prefill + token-by-token decoding against
the reference's full forward at every position (CI also runs it under ``--edifice-mutate`` of each op it calls).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import edifice
from edifice.testing import redraw_parameters, signature
from edifice.testing.tol import FP32, assert_close
from edifice_ssm.zamba import Zamba

transformers = pytest.importorskip("transformers")
# Resolve the lazily imported classes once at collection, not inside a timed test.
HFZambaConfig, HFZambaForCausalLM, HFZambaModel = (
    transformers.ZambaConfig,
    transformers.ZambaForCausalLM,
    transformers.ZambaModel,
)

VOCAB = 40


def _hf(seed: int = 0, cls: Any = None, **overrides: Any) -> Any:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "n_mamba_heads": 2,
        "mamba_d_state": 4,
        "mamba_d_conv": 3,
        "mamba_expand": 2,
        "mamba_dt_rank": 3,
        "mamba_proj_bias": True,
        "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"],
        # transformers ties the shared block's copies only together with the embeddings (tie_word_embeddings=True,
        # Zamba's default); untied, each application would get its own weights, which is not Zamba.
        "tie_word_embeddings": True,
        "use_cache": False,
        "attn_implementation": "eager",
        **overrides,
    }
    torch.manual_seed(seed)
    model = (cls or HFZambaForCausalLM)(HFZambaConfig(**fields)).eval()
    with torch.no_grad():
        # transformers' N(0, 0.02) init makes most branches negligible; unit-variance weights, random gains, skips
        # and Δ biases make every part observable. Tied shared-block parameters are drawn once.
        for name, p in model.named_parameters():
            if name.endswith(("layernorm.weight", ".D")):
                p.uniform_(0.5, 1.5)
            elif name.endswith("dt_proj_bias"):
                p.uniform_(-4.0, 0.5)
            elif name.endswith("embed_tokens.weight"):
                p.normal_(0.0, 1.0)
            elif p.dim() >= 2 and not name.endswith("A_log"):
                p.normal_(0.0, p.shape[-1] ** -0.5)
    # Then noise on every other parameter (biases, A_log, D): a zero in_proj bias would hide a leak into padded
    # positions. The weights drawn above stay as they are (more noise there only amplifies fp32 rounding).
    return redraw_parameters(model, seed=seed, keep=("*weight",))


def _ids(batch: int = 2, length: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@signature("zamba")
def test_zamba_matches_transformers() -> None:
    hf = _hf(seed=1)
    model = edifice.convert("transformers.ZambaForCausalLM", hf).eval()
    assert isinstance(model, Zamba) and model.config.hybrid_layers == (1, 3)
    ids = _ids()
    with torch.no_grad():
        want = hf(ids).logits  # (B, T, V)
        assert_close(model(input_ids=ids), want, FP32, name="zamba: forward vs transformers")
        # Left padding: the valid positions equal the unpadded run.
        pad = torch.zeros(2, 3, dtype=torch.long)
        mask = torch.cat([torch.zeros(2, 3, dtype=torch.bool), torch.ones_like(ids, dtype=torch.bool)], 1)
        padded = model(input_ids=torch.cat([pad, ids], 1), attention_mask=mask)
        assert_close(padded[:, 3:], want, FP32, name="zamba: left-padded vs transformers")
        # Prefill 4 tokens, then decode one at a time: each output equals the reference's at that position.
        state = model.init_state(2)
        outs = [model.step(ids[:, :4], state)[0]]
        outs += [model.step(ids[:, t : t + 1], state)[0] for t in range(4, ids.shape[1])]
        assert_close(torch.cat(outs, 1), want, FP32, name="zamba: prefill + decode vs transformers")


def test_shared_block_is_stored_once_and_survives_save_and_load(tmp_path: Path) -> None:
    hf = _hf(seed=2)
    model = edifice.convert("transformers.ZambaForCausalLM", hf).eval()
    shared = [n for n in model.state_dict() if "self_attn.q_proj" in n]
    assert shared == ["shared.self_attn.q_proj.weight"]  # one copy, however many applications
    n_hf = sum(p.numel() for p in hf.parameters())  # transformers counts tied parameters once too
    assert sum(p.numel() for p in model.parameters()) == n_hf
    edifice.save(model, tmp_path / "zamba.safetensors")
    loaded = edifice.load(tmp_path / "zamba.safetensors").eval()
    ids = _ids(seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids), model(input_ids=ids))
    # Both applications read the same tensors: changing the shared block changes both layers' inputs.
    with torch.no_grad():
        base = model(input_ids=ids)
        model.shared.self_attn.o_proj.weight.mul_(2.0)
        assert not torch.allclose(model(input_ids=ids), base)


def test_zamba_model_with_transformers_default_schedule_matches() -> None:
    # transformers' ZambaModel (no head) with its default schedule (layer 2, then 3 + i with i % 6 == 4) and one
    # Mamba head.
    hf = _hf(seed=4, cls=HFZambaModel, num_hidden_layers=9, layers_block_type=None, n_mamba_heads=1)
    model = edifice.convert("transformers.ZambaModel", hf).eval()
    assert model.config.hybrid_layers == (2, 7) and model.config.tie_embeddings
    ids = _ids(seed=5)
    with torch.no_grad():
        want = hf(ids).last_hidden_state @ hf.embed_tokens.weight.T
        assert_close(model(input_ids=ids), want, FP32)


def test_converter_reports_unknown_keys_untied_copies_and_bad_configs() -> None:
    hf = _hf(seed=6)
    state = hf.state_dict()
    model = edifice.convert("transformers.ZambaForCausalLM", (hf.config.to_dict(), state)).eval()
    ids = _ids(seed=7)
    with torch.no_grad():
        assert_close(model(input_ids=ids), hf(ids).logits, FP32)
    with pytest.raises(edifice.CheckpointError, match="unexpected"):
        edifice.convert("transformers.ZambaForCausalLM", (hf.config, {**state, "model.layers.0.extra": torch.zeros(1)}))
    untied = dict(state)
    key = "model.layers.3.shared_transf.self_attn.q_proj.weight"
    untied[key] = untied[key] + 1.0
    with pytest.raises(edifice.CheckpointError, match="shared block differs"):
        edifice.convert("transformers.ZambaForCausalLM", (hf.config, untied))
    with pytest.raises(edifice.ConfigError, match="attention_hidden_size"):
        edifice.convert("transformers.ZambaForCausalLM", ({**hf.config.to_dict(), "attention_hidden_size": 48}, {}))
