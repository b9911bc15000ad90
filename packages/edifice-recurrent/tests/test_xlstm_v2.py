"""Tests of ``xlstm_v2`` (xLSTM 7B): parity with transformers' ``xLSTMForCausalLM``, soft caps, the 7B init.

The signature tests build a tiny random ``xLSTMForCausalLM`` (both weight layouts), convert it with the registered
converter and compare logits in fp32. The reference's logit cap is lowered to 3 so that soft-capping visibly shapes
the logits: dropping the cap, or swapping ``edifice.ops.mlstm``/``rms_norm`` for a wrong implementation, breaks parity.
"""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import pytest
import torch

import edifice
from edifice.errors import CheckpointError
from edifice.testing import mutate_op, signature
from edifice_recurrent.xlstm_v2 import XLSTMV2, SoftCappedLMHead, from_transformers

transformers = pytest.importorskip("transformers")
modeling_xlstm = pytest.importorskip("transformers.models.xlstm.modeling_xlstm")

TOL = {"atol": 3e-5, "rtol": 1e-5}  # fp32: hidden states agree to ~1e-6; logits (size ~3) sum 32 of them
VOCAB = 50


def make_hf(seed: int = 0, **overrides: Any) -> Any:
    """A tiny ``xLSTMForCausalLM`` in fp32 with every parameter drawn at random."""
    options = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_blocks": 2,
        "num_heads": 2,
        "ffn_round_up_to_multiple_of": 8,
        "chunk_size": 4,
        "autocast_kernel_dtype": "float32",
        "output_logit_soft_cap": 3.0,
        **overrides,
    }
    config = transformers.xLSTMConfig(**options)
    # transformers' own init breaks for weight_mode="fused" (a shape bug in _init_weights); every weight is redrawn
    # below anyway, so skip it.
    with mock.patch.object(modeling_xlstm.xLSTMPreTrainedModel, "_init_weights", return_value=None):
        model = transformers.xLSTMForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 1.0))
    return model


def token_ids(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_logits(hf: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=ids, use_cache=False).logits  # type: ignore[no-any-return]


def logit_error(hf: Any, model: XLSTMV2, T: int = 13) -> float:
    ids = token_ids(2, T, seed=T)
    with torch.no_grad():
        return float((model(input_ids=ids) - hf_logits(hf, ids)).abs().max())


def check_parity(weight_mode: str, T: int) -> None:
    hf = make_hf(weight_mode=weight_mode)
    model = edifice.convert("transformers.xLSTMForCausalLM", hf).eval()
    ids = token_ids(2, T, seed=T)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids), hf_logits(hf, ids), **TOL)


@signature("xlstm_v2")
@pytest.mark.parametrize("weight_mode", ["single", "fused"])
@pytest.mark.parametrize("T", [4, 13])  # T > 1: with one step the forget gate has no memory to act on
def test_matches_transformers_causal_lm(weight_mode: str, T: int) -> None:
    check_parity(weight_mode, T)


def test_final_norm_uses_norm_eps() -> None:
    hf = make_hf(seed=5, norm_eps=1e-3)
    model = edifice.convert("transformers.xLSTMForCausalLM", hf).eval()
    # The final norm at 1e-6 instead of 1e-3 was 1.2e-3 off; the bound leaves room for the thread count's rounding.
    assert logit_error(hf, model, T=5) <= 3e-4 and model.norm.eps == 1e-3


def test_single_token_matches_transformers_causal_lm() -> None:
    check_parity("single", 1)


@signature("xlstm_v2")
def test_steps_match_transformers_causal_lm() -> None:
    hf = make_hf(seed=1)
    model = from_transformers(hf).eval()
    ids = token_ids(2, 9, seed=2)
    with torch.no_grad():
        state = model.init_state(2)
        pieces = [model.step(ids[:, :4], state)[0]] + [model.step(ids[:, t : t + 1], state)[0] for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(pieces, 1), hf_logits(hf, ids), atol=5e-5, rtol=1e-5)


def test_parity_needs_the_logit_cap_the_forget_gate_and_the_norm() -> None:
    hf = make_hf(seed=3)
    model = from_transformers(hf).eval()
    assert isinstance(model.lm_head, SoftCappedLMHead) and model.lm_head.cap == 3.0
    assert logit_error(hf, model) <= 1e-4
    model.lm_head.cap = None  # a plain LM head: the reference's logits are capped at 3, ours are not
    assert logit_error(hf, model) > 1e-1
    model.lm_head.cap = 3.0
    for op in ("mlstm", "rms_norm"):
        with mutate_op(op):
            assert logit_error(hf, model) > 1e-3, op


def test_logits_never_exceed_the_cap() -> None:
    model = edifice.build("xlstm_v2", d_model=16, n_layers=1, n_heads=2, vocab_size=20, logit_soft_cap=2.0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e3)
        logits = model(input_ids=token_ids(2, 5, seed=4) % 20)
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9


def test_tied_embeddings_follow_the_weights() -> None:
    # transformers' xLSTMForCausalLM keeps its own head even with tie_word_embeddings=True: the weights decide.
    hf = make_hf(seed=5, tie_word_embeddings=True)
    model = from_transformers(hf).eval()
    assert model.lm_head is not None and model.embed_tokens is not None
    assert model.lm_head.weight is not model.embed_tokens.weight
    assert logit_error(hf, model, T=6) <= 1e-4
    # A checkpoint that stores one matrix for both (or no head at all) converts to a tied model.
    weights = hf.state_dict()
    weights["lm_head.weight"] = weights["backbone.embeddings.weight"]
    for state_dict in (weights, {k: v for k, v in weights.items() if k != "lm_head.weight"}):
        tied = from_transformers((hf.config, state_dict))
        assert tied.config.tie_embeddings and tied.lm_head.weight is tied.embed_tokens.weight
        hf.lm_head.weight.data.copy_(weights["backbone.embeddings.weight"])
        assert logit_error(hf, tied.eval(), T=6) <= 1e-4


def test_converter_errors_name_the_problem() -> None:
    hf = make_hf(seed=6)
    with pytest.raises(CheckpointError, match="use_bias"):
        from_transformers((dict(hf.config.to_dict(), use_bias=True), hf.state_dict()))
    no_head = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    with pytest.raises(CheckpointError, match="lm_head"):
        from_transformers((hf.config, no_head))
    with pytest.raises(TypeError, match="transformers model or"):
        from_transformers(object())


@torch.no_grad()
def test_initialisation_follows_xlstm_7b() -> None:
    torch.manual_seed(7)
    d, L, H = 256, 4, 4
    model = edifice.build("xlstm_v2", d_model=d, n_layers=L, n_heads=H, vocab_size=300)
    small, wang = math.sqrt(2 / (5 * d)), 2 / L / math.sqrt(d)
    assert model.embed_tokens is not None and model.lm_head is not None
    for weight in (model.embed_tokens.weight, model.lm_head.weight):
        assert abs(float(weight.std()) / small - 1) < 0.03
    for block in model.layers:
        mixer, ffn = block.mixer, block.ffn
        assert abs(float(mixer.q.weight.std()) / small - 1) < 0.05
        assert abs(float(ffn.up_proj.weight.std()) / small - 1) < 0.05
        assert abs(float(mixer.out_proj.weight.std()) / wang - 1) < 0.05
        assert abs(float(ffn.down_proj.weight.std()) / wang - 1) < 0.05
        assert not mixer.igate_preact.weight.any() and not mixer.fgate_preact.weight.any()
        torch.testing.assert_close(mixer.igate_preact.bias, torch.full((H,), -10.0))
        torch.testing.assert_close(mixer.fgate_preact.bias, torch.linspace(3.0, 6.0, H))


def test_features_in_hidden_out_and_padding() -> None:
    torch.manual_seed(8)
    model = edifice.build("xlstm_v2", d_model=16, n_layers=2, n_heads=2, d_in=5, ffn_multiple_of=8, chunk_size=3)
    model.eval()
    assert model.lm_head is None
    x = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(9))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, :3] = False  # left padding
    with torch.no_grad():
        padded = model(x=x, attention_mask=mask)
        alone = model(x=x[1:, 3:])
    assert padded.shape == (2, 7, 16)
    torch.testing.assert_close(padded[1:, 3:], alone, **TOL)


def test_config_errors() -> None:
    with pytest.raises(edifice.ConfigError, match="slstm_at"):
        edifice.build("xlstm_v2", slstm_at=(0,))
    with pytest.raises(edifice.ConfigError, match="logit_soft_cap"):
        edifice.config("xlstm_v2", logit_soft_cap=0.0)
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("xlstm_v2", d_model=30, n_heads=4)
    config = edifice.config("xlstm_v2", num_blocks=3, hidden_size=32, expand_factor=2.0, output_logit_soft_cap=10.0)
    assert (config.n_layers, config.d_model, config.ffn_factor, config.logit_soft_cap) == (3, 32, 2.0, 10.0)
