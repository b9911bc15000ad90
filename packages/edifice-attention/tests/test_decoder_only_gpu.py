"""GPU checks: a static-cache decode step is captured in a CUDA graph and replayed; bf16 decoding tracks fp32."""

from __future__ import annotations

import pytest
import torch

import edifice
from edifice.testing.tol import SCAN, assert_close, assert_relative_l2

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _model(name: str = "decoder_only", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = edifice.build(name, **edifice.get_spec(name).tiny).eval()
    return model.to(device="cuda", dtype=dtype)


# The softmax-attention variants (docs/design/attention_variants.md) decode through the same static cache.
VARIANTS = ["diff_transformer", "gated_attention", "sigmoid_attention", "ssmax", "softpick", "fox", "laser"]


@pytest.mark.parametrize("name", ["decoder_only", "attention", *VARIANTS])
def test_static_decode_step_replays_in_a_cuda_graph(name: str) -> None:
    model = _model(name)
    c = model.config
    T, prefill = 12, 4
    g = torch.Generator(device="cuda").manual_seed(1)
    if c.vocab_size is not None:
        inputs = torch.randint(0, c.vocab_size, (2, T), device="cuda", generator=g)
    else:
        inputs = torch.randn(2, T, c.d_in or c.d_model, device="cuda", generator=g)
    with torch.no_grad():
        expected = model(**{model.primary_input: inputs})
        state = model.init_state(2, max_len=T)
        outs = [model.step(inputs[:, :prefill], state)[0]]
        static_in = inputs[:, prefill : prefill + 1].clone()
        # Warm up on a side stream (allocator and lazy init), as torch.cuda.graphs recommends, then capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            snapshot = [t.clone() for t in (state.position, *(c.length for c in state.layers))]
            model.step(static_in, state)
            state.position.copy_(snapshot[0])
            for cache, length in zip(state.layers, snapshot[1:], strict=True):
                cache.length.copy_(length)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out, _ = model.step(static_in, state)
        for t in range(prefill, T):
            static_in.copy_(inputs[:, t : t + 1])
            graph.replay()
            outs.append(static_out.clone())
    assert_close(torch.cat(outs, dim=1), expected, SCAN, name="graph-replayed decode")


def test_bf16_decoding_tracks_fp32() -> None:
    fp32, bf16 = _model(), _model(dtype=torch.bfloat16)
    ids = torch.randint(0, 64, (2, 10), device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))
    with torch.no_grad():
        expected = fp32(input_ids=ids)
        state = bf16.init_state(2, max_len=10)
        outs = [bf16.step(ids[:, :5], state)[0]] + [bf16.step(ids[:, t : t + 1], state)[0] for t in range(5, 10)]
    assert_relative_l2(torch.cat(outs, 1).float(), expected, 2e-2)
