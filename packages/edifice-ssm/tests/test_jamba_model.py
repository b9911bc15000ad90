"""jamba: layer schedule, decoding, the MoE loss, initialisation, config and input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo  # non-reentrant checkpointing imports it: pay that once at collection, not in a test
import torch.nn.functional as F

import edifice
from edifice.blocks.attention import Attention
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.moe import MoEFeedForward
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm.jamba import Jamba, JambaMambaMixer

TINY = {
    "d_model": 16,
    "n_layers": 4,
    "d_in": 5,
    "d_state": 4,
    "d_conv": 3,
    "n_heads": 2,
    "n_kv_heads": 1,
    "attn_layer_period": 4,
    "attn_layer_offset": 2,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "n_experts": 4,
    "d_ff": 24,
}


def _build(seed: int = 0, **overrides: object) -> Jamba:
    torch.manual_seed(seed)
    model = edifice.build("jamba", **{**TINY, **overrides})
    assert isinstance(model, Jamba)
    return model


def _x(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, TINY["d_in"], generator=torch.Generator().manual_seed(seed))


def test_layer_schedule_follows_the_periods() -> None:
    model = _build()
    mixers = [type(layer.mixer) for layer in model.layers]
    ffns = [type(layer.ffn) for layer in model.layers]
    assert mixers == [JambaMambaMixer, JambaMambaMixer, Attention, JambaMambaMixer]
    assert ffns == [GatedFeedForward, MoEFeedForward, GatedFeedForward, MoEFeedForward]
    attention = model.layers[2].mixer
    assert attention.rope is None and attention.causal and attention.n_kv_heads == 1  # no positional encoding
    moe = model.layers[1].ffn
    assert not moe.norm_topk_prob and moe.top_k == 2 and moe.aux_loss_coef == 0.001
    dense = _build(n_experts=1)
    assert not dense.returns_aux_loss and all(isinstance(layer.ffn, GatedFeedForward) for layer in dense.layers)


def test_step_reproduces_forward_at_every_prefix() -> None:
    model = _build(seed=2).eval()
    x = _x(2, 11, seed=3)
    with torch.no_grad():
        want = model(x=x)
        for max_len in (None, 11):
            state = model.init_state(2, max_len=max_len)
            pieces = []
            for start, stop in ((0, 4), (4, 5), (5, 6), (6, 11)):  # prefill, two decode steps, a chunk
                y, state = model.step(x[:, start:stop], state)
                pieces.append(y.hidden)
            assert_close(torch.cat(pieces, 1), want.hidden, SCAN, name=f"max_len={max_len}")
    mamba_state = state.layers[0]
    assert mamba_state.ssm.dtype == torch.float32 and mamba_state.ssm.shape == (2, 32, 4)


def test_aux_loss_is_the_weighted_sum_of_each_moe_layers_balance_loss() -> None:
    model = _build(seed=4).train()
    x = _x(3, 6, seed=5)
    out = model(x=x)
    layer_losses = []
    h = model.input_proj(x)
    for layer in model.layers:
        h, aux = layer(h)
        if aux is not None:
            layer_losses.append(aux)
    assert len(layer_losses) == 2
    assert_close(out.aux_loss, torch.stack(layer_losses).sum())
    out.aux_loss.backward()
    assert model.layers[1].ffn.router.weight.grad is not None


def test_grad_checkpointing_gives_identical_gradients() -> None:
    x = _x(2, 7, seed=6)
    grads = []
    for enable in (False, True):
        model = _build(seed=7).train()
        model.set_grad_checkpointing(enable)
        out = model(x=x)
        (out.hidden.square().sum() + out.aux_loss).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], name=name)


def test_reset_parameters_follows_mamba_and_the_released_initializer_range() -> None:
    model = _build(seed=8, d_model=64, d_ff=256, n_heads=4, n_kv_heads=2, d_state=8, init_std=0.02, vocab_size=300)
    mixer = model.layers[0].mixer
    E, N = 128, 8
    assert torch.allclose(-torch.exp(mixer.A_log), -torch.arange(1, N + 1, dtype=torch.float32).expand(E, N))
    assert torch.equal(mixer.D, torch.ones(E))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert abs(dt.log().mean().item() - (math.log(0.001) + math.log(0.1)) / 2) < 0.4
    for norm in (mixer.dt_layernorm, mixer.b_layernorm, mixer.c_layernorm):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    attention, moe = model.layers[2].mixer, model.layers[1].ffn
    for w in (attention.q_proj.weight, moe.router.weight, moe.experts[0].gate_proj.weight, model.embed_tokens.weight):
        assert abs(w.std().item() - 0.02) < 0.004 and abs(w.mean().item()) < 0.004


def test_config_validates_and_accepts_original_option_names() -> None:
    config = edifice.config(
        "jamba", attention_every=4, attn_layer_offset=1, num_experts=8, state_size=8, expand_factor=3, conv_size=2
    )
    assert (config.attn_layer_period, config.n_experts, config.d_state, config.expand, config.d_conv) == (4, 8, 8, 3, 2)
    assert config.ffn_dim == int(3.5 * 64)
    with pytest.raises(edifice.ConfigError, match="attn_layer_offset"):
        edifice.config("jamba", attn_layer_period=4, attn_layer_offset=4)
    with pytest.raises(edifice.ConfigError, match="expert_layer_offset"):
        edifice.config("jamba", expert_layer_offset=2)
    with pytest.raises(edifice.ConfigError, match="top_k"):
        edifice.config("jamba", n_experts=4, top_k=5)
    with pytest.raises(edifice.ConfigError, match="n_kv_heads"):
        edifice.config("jamba", n_heads=4, n_kv_heads=3)
    with pytest.raises(edifice.ConfigError, match="activation"):
        edifice.config("jamba", activation="tanh")
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("jamba", d_model=30, n_heads=4, n_kv_heads=1)


def test_bad_inputs_raise_input_errors() -> None:
    model = _build().eval()
    with pytest.raises(edifice.InputError, match=r"jamba: input 'x' expected \[B, T, 5\]"):
        model(x=torch.randn(2, 4, 7))
    with pytest.raises(edifice.InputError, match="attention_mask"):
        model(x=_x(2, 4), attention_mask=torch.ones(2, 5, dtype=torch.bool))
