"""Decoding and padding for attention, gqa and decoder_only (dense and MoE): step == forward, static == dynamic."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import edifice
from edifice.blocks.backbone import SequenceOutput
from edifice.blocks.kv_cache import StaticKVCache
from edifice.testing.tol import FP32, SCAN, assert_close

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "attention": ("attention", {}),
    "attention-tokens": ("attention", {"vocab_size": 30, "d_in": None, "tie_embeddings": True}),
    "gqa": ("gqa", {}),
    "decoder_only": ("decoder_only", {}),
    "decoder_only-moe": ("decoder_only", {"n_experts": 3, "moe_top_k": 2, "d_ff": 16, "window": 3}),
}


def _build(case: str) -> nn.Module:
    name, overrides = CASES[case]
    torch.manual_seed(0)
    model = edifice.build(name, **{**edifice.get_spec(name).tiny, **overrides}).eval()
    return model


def _inputs(model: nn.Module, B: int, T: int, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    c = model.config
    if c.vocab_size is not None:
        return torch.randint(0, c.vocab_size, (B, T), generator=g)
    return torch.randn(B, T, c.d_in or c.d_model, generator=g)


def _main(out: Tensor | SequenceOutput) -> Tensor:
    if isinstance(out, SequenceOutput):
        main = out.logits if out.logits is not None else out.hidden
        assert main is not None
        return main
    return out


def _call(model: nn.Module, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
    return _main(model(**{model.primary_input: inputs, "attention_mask": mask}))


def _decode(model: nn.Module, inputs: Tensor, max_len: int | None, prefill: int) -> tuple[Tensor, Any]:
    state = model.init_state(inputs.shape[0], max_len=max_len)
    outs = [_main(model.step(inputs[:, :prefill], state)[0])]
    for t in range(prefill, inputs.shape[1]):
        y, state = model.step(inputs[:, t : t + 1], state)
        outs.append(_main(y))
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("case", list(CASES))
def test_prefill_and_decode_equal_forward_with_dynamic_and_static_caches(case: str) -> None:
    model = _build(case)
    inputs = _inputs(model, 2, 10)
    with torch.no_grad():
        full = _call(model, inputs)
        dynamic, _ = _decode(model, inputs, None, prefill=4)
        static, state = _decode(model, inputs, 12, prefill=4)
    assert_close(dynamic, full, SCAN, name="dynamic cache")
    assert_close(static, full, SCAN, name="static cache")
    assert_close(static, dynamic, FP32, name="static vs dynamic")
    cache = state.layers[0]
    assert isinstance(cache, StaticKVCache)
    assert cache.max_len == 12
    assert int(cache.length) == 10


def test_static_cache_is_written_in_place() -> None:
    model = _build("decoder_only")
    inputs = _inputs(model, 2, 6)
    state = model.init_state(2, max_len=8)
    pointers = [(c.keys.data_ptr(), c.values.data_ptr()) for c in state.layers]
    with torch.no_grad():
        for t in range(6):
            model.step(inputs[:, t : t + 1], state)
    assert [(c.keys.data_ptr(), c.values.data_ptr()) for c in state.layers] == pointers


@pytest.mark.parametrize("case", list(CASES))
def test_padded_with_mask_equals_unpadded(case: str) -> None:
    model = _build(case)
    inputs = _inputs(model, 1, 7)
    pad = _inputs(model, 1, 3, seed=9)
    with torch.no_grad():
        expected = _call(model, inputs)
        left = _call(model, torch.cat([pad, inputs], 1), torch.tensor([[False] * 3 + [True] * 7]))
        right = _call(model, torch.cat([inputs, pad], 1), torch.tensor([[True] * 7 + [False] * 3]))
    assert_close(left[:, 3:], expected, FP32, name="left padded")
    assert_close(right[:, :7], expected, FP32, name="right padded")


@pytest.mark.parametrize("max_len", [None, 12])
def test_batched_decoding_of_a_left_padded_prompt(max_len: int | None) -> None:
    """Row 0's prompt is 2 tokens shorter (left-padded); each row decodes as if it were alone."""
    model = _build("decoder_only")
    inputs = _inputs(model, 2, 8)
    prompt = inputs[:, :5].clone()
    prompt[0, :2] = 0
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    with torch.no_grad():
        state = model.init_state(2, max_len=max_len)
        outs = [model.step(prompt, state, attention_mask=mask)[0]]
        for t in range(5, 8):
            outs.append(model.step(inputs[:, t : t + 1], state)[0])
        stepped = torch.cat(outs, dim=1)
        alone0 = _call(model, inputs[:1, 2:])
        alone1 = _call(model, inputs[1:])
    assert_close(stepped[:1, 2:], alone0, SCAN, name="row 0")
    assert_close(stepped[1:], alone1, SCAN, name="row 1")
    assert state.position.tolist() == [6, 8]


def test_moe_returns_aux_loss_from_forward_and_step() -> None:
    model = _build("decoder_only-moe")
    inputs = _inputs(model, 2, 5)
    out = model(input_ids=inputs)
    assert isinstance(out, SequenceOutput)
    assert out.aux_loss is not None
    assert out.aux_loss.dim() == 0
    assert out.aux_loss > 0
    y, _ = model.step(inputs, model.init_state(2))
    assert isinstance(y, SequenceOutput)
    assert y.aux_loss is not None


def test_pooled_outputs() -> None:
    torch.manual_seed(0)
    full = edifice.build("gqa", **edifice.get_spec("gqa").tiny).eval()
    last = edifice.build("gqa", **edifice.get_spec("gqa").tiny, output="last").eval()
    last.load_state_dict(full.state_dict())
    inputs = _inputs(full, 2, 6)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        per_position = full(inputs, attention_mask=mask)
        assert_close(last(inputs, attention_mask=mask), per_position[[0, 1], [5, 3]], FP32)
