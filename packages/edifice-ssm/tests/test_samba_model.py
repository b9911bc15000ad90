"""samba: layer schedule, padding and decoding with the ring buffer, initialisation, config and input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo  # non-reentrant checkpointing imports it: pay that once at collection, not in a test

import edifice
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.kv_cache import SlidingWindowKVCache
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm.mamba import MambaMixer, MambaState
from edifice_ssm.samba import Samba, SlidingWindowAttention

TINY = {"d_model": 16, "n_layers": 4, "d_in": 5, "d_state": 4, "d_conv": 3, "n_heads": 2, "window": 3, "d_ff": 24}


def _build(seed: int = 0, **overrides: object) -> Samba:
    torch.manual_seed(seed)
    model = edifice.build("samba", **{**TINY, **overrides})
    assert isinstance(model, Samba)
    return model


def _x(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, TINY["d_in"], generator=torch.Generator().manual_seed(seed))


def test_layers_alternate_mamba_and_sliding_window_attention() -> None:
    model = _build()
    assert [type(layer.mixer) for layer in model.layers] == [MambaMixer, SlidingWindowAttention] * 2
    assert all(isinstance(layer.ffn, GatedFeedForward) and layer.ffn.activation == "silu" for layer in model.layers)
    attn = model.layers[1].mixer
    assert attn.window == 3 and attn.causal and attn.rope is not None and attn.rope.base == 10000.0


def test_padded_prompts_then_decoding_give_the_unpadded_result() -> None:
    # Row 0 is left-padded by 2 (5 real tokens), row 1 has 7; then both decode past the window, each at its own
    # position. (Right padding followed by more steps is not supported: Mamba's conv state would hold the pads.)
    model = _build(seed=2).eval()
    x = _x(2, 11, seed=3)
    with torch.no_grad():
        want = model(x=x)
        prompt = torch.zeros(2, 7, TINY["d_in"])
        prompt[0, 2:], prompt[1] = x[0, :5], x[1, :7]
        mask = torch.ones(2, 7, dtype=torch.bool)
        mask[0, :2] = False
        assert_close(model(x=prompt, attention_mask=mask)[0, 2:], want[0, :5], SCAN, name="forward, left padding")
        state = model.init_state(2)
        first, state = model.step(prompt, state, attention_mask=mask)
        rest = [model.step(torch.stack([x[0, 5 + j], x[1, 7 + j]])[:, None], state)[0] for j in range(4)]
    assert_close(first[0, 2:], want[0, :5], SCAN, name="prefill, left-padded row")
    assert_close(first[1], want[1, :7], SCAN, name="prefill, unpadded row")
    steps = torch.cat(rest, 1)
    assert_close(steps[0], want[0, 5:9], SCAN, name="decoding after a left-padded prompt")
    assert_close(steps[1], want[1, 7:11], SCAN, name="decoding of the unpadded row")
    assert isinstance(state.layers[0], MambaState) and isinstance(state.layers[1], SlidingWindowKVCache)
    assert state.layers[1].written.tolist() == [9, 11]


def test_long_decoding_keeps_constant_memory() -> None:
    model = _build(seed=4, n_layers=2).eval()
    x = _x(1, 40, seed=5)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(1, max_len=4)  # max_len is irrelevant: the ring has window + 1 slots
        sizes = [t.numel() for layer in state.layers for t in vars(layer).values()]
        outs = [model.step(x[:, t : t + 1], state)[0] for t in range(40)]
    assert [t.numel() for layer in state.layers for t in vars(layer).values()] == sizes
    assert_close(torch.cat(outs, 1), want, SCAN)


def test_grad_checkpointing_gives_identical_gradients() -> None:
    x = _x(2, 7, seed=6)
    grads = []
    for enable in (False, True):
        model = _build(seed=7).train()
        model.set_grad_checkpointing(enable)
        model(x=x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], name=name)


def test_reset_parameters_scales_every_output_projection_by_depth() -> None:
    model = _build(seed=8, d_model=64, n_layers=4, d_ff=128, n_heads=4, vocab_size=300)
    scale = math.sqrt(2 * 4)
    for layer in model.layers:
        out = layer.mixer.out_proj if isinstance(layer.mixer, MambaMixer) else layer.mixer.o_proj
        for w in (out.weight, layer.ffn.down_proj.weight):
            bound = w.shape[1] ** -0.5 / scale  # PyTorch's kaiming-uniform bound, divided
            assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.9 * bound
    assert abs(model.embed_tokens.weight.std().item() - 0.02) < 0.003
    mamba = model.layers[0].mixer
    assert torch.equal(mamba.D, torch.ones_like(mamba.D))


def test_mlp_width_defaults_to_the_released_configs() -> None:
    # Samba-421M / 1.3B / 3.8B: d_model 1536 / 2304 / 3072 with intermediate_size 4096 / 6144 / 8192 = 8/3 d_model.
    for d_model, width in ((1536, 4096), (2304, 6144), (3072, 8192)):
        assert edifice.config("samba", d_model=d_model, n_heads=12).ffn_dim == width
    assert edifice.config("samba", d_model=20, n_heads=2).ffn_dim == 56  # 53.3 rounded up to a multiple of 8


def test_config_validates_and_accepts_original_option_names() -> None:
    config = edifice.config("samba", window_size=64, mlp_dim=96, num_heads=2, state_size=8, expand_factor=1)
    assert (config.window, config.d_ff, config.n_heads, config.d_state, config.expand) == (64, 96, 2, 8, 1)
    assert config.attn_head_dim == 32
    with pytest.raises(edifice.ConfigError, match="window"):
        edifice.config("samba", window=0)
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("samba", d_model=30, n_heads=4)
    with pytest.raises(edifice.ConfigError, match="head_dim"):
        edifice.config("samba", head_dim=7)
    with pytest.raises(edifice.ConfigError, match="n_kv_heads"):
        edifice.config("samba", n_heads=4, n_kv_heads=3)
    with pytest.raises(edifice.ConfigError, match="rope_theta"):
        edifice.config("samba", rope_theta=1.0)


def test_bad_inputs_raise_input_errors() -> None:
    model = _build().eval()
    with pytest.raises(edifice.InputError, match=r"samba: input 'x' expected \[B, T, 5\]"):
        model(x=torch.randn(2, 4, 7))
    with pytest.raises(edifice.InputError, match="samba: input 'x'"):
        model(x=torch.randn(2, 4))
