"""GPU checks of ``griffin`` and ``hawk``: RecurrentGemma parity on CUDA, CPU = CUDA, a decode step replayed in a
CUDA graph (ring KV cache and RG-LRU state, no host sync), bf16 tracking fp32 at odd lengths."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import edifice
from edifice.testing import redraw_parameters
from edifice.testing.tol import SCAN, assert_close, assert_relative_l2

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GRIFFIN = ["recurrent", "recurrent", "attention"]


def _model(name: str, dtype: torch.dtype = torch.float32, device: str = "cuda", **overrides: Any) -> Any:
    torch.manual_seed(0)
    fields = {"d_model": 64, "n_layers": 3, "n_heads": 4, "lru_width": 64, "d_ff": 96, "vocab_size": 50, "window": 16}
    model = edifice.build(name, **{**fields, **overrides}).eval()
    redraw_parameters(model, seed=1)
    return model.to(device=device, dtype=dtype)


@pytest.mark.parametrize("block_types", [GRIFFIN, ["recurrent"]], ids=["griffin", "hawk"])
def test_matches_recurrent_gemma_on_cuda(block_types: list[str]) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.RecurrentGemmaConfig(
        num_hidden_layers=3,
        vocab_size=50,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        lru_width=48,
        attention_window_size=9,
        block_types=block_types,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = redraw_parameters(transformers.RecurrentGemmaForCausalLM(config).eval(), seed=0).cuda()
    model: Any = edifice.convert("transformers.RecurrentGemmaForCausalLM", hf).cuda()
    ids = torch.randint(0, 50, (2, 63), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    with torch.no_grad():
        want = hf(ids, use_cache=False).logits
        assert_close(model(input_ids=ids), want, SCAN, name="forward")
        state = model.init_state(2)
        steps = [model.step(ids[:, :7], state)[0]] + [model.step(ids[:, t : t + 1], state)[0] for t in range(7, 63)]
    assert_close(torch.cat(steps, 1), want, SCAN, name="prefill + steps")


@pytest.mark.parametrize("length", [1, 63, 130])
def test_cuda_matches_cpu(length: int) -> None:
    cpu, cuda = _model("griffin", device="cpu"), _model("griffin")
    ids = torch.randint(0, 50, (2, length), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(cuda(input_ids=ids.cuda()).cpu(), cpu(input_ids=ids), SCAN, name=f"T={length}")


@pytest.mark.parametrize("name", ["griffin", "hawk"])
def test_decode_step_replays_in_a_cuda_graph(name: str) -> None:
    model = _model(name)
    T, prefill = 40, 5
    ids = torch.randint(0, 50, (2, T), device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
    with torch.no_grad():
        expected = model(input_ids=ids)
        state = model.init_state(2)
        outs = [model.step(ids[:, :prefill], state)[0]]
        static_in = ids[:, prefill : prefill + 1].clone()
        # Warm up on a copy of the state on a side stream (allocator, lazy init), then capture on the real one.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model.step(static_in, copy.deepcopy(state))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out, _ = model.step(static_in, state)
        for t in range(prefill, T):
            static_in.copy_(ids[:, t : t + 1])
            graph.replay()
            outs.append(static_out.clone())
    assert_close(torch.cat(outs, dim=1), expected, SCAN, name="graph-replayed decode")


@pytest.mark.parametrize("length", [1, 63, 130])
def test_bf16_tracks_fp32(length: int) -> None:
    fp32, bf16 = _model("griffin"), _model("griffin", dtype=torch.bfloat16)
    ids = torch.randint(0, 50, (2, length), device="cuda", generator=torch.Generator(device="cuda").manual_seed(4))
    with torch.no_grad():
        want = fp32(input_ids=ids)
        assert_relative_l2(bf16(input_ids=ids).float(), want, 2e-2, name="bf16 forward")
        state = bf16.init_state(2)
        steps = [bf16.step(ids[:, t : t + 1], state)[0] for t in range(length)]
    assert_relative_l2(torch.cat(steps, 1).float(), want, 2e-2, name="bf16 steps")


def test_backward_is_finite_in_bf16() -> None:
    model = _model("griffin", dtype=torch.bfloat16).train()
    ids = torch.randint(0, 50, (2, 130), device="cuda", generator=torch.Generator(device="cuda").manual_seed(5))
    loss = model(input_ids=ids).float().logsumexp(-1).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
