"""zamba: schedule, the shared block's inputs, decoding with per-application caches, init, config and input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo  # non-reentrant checkpointing imports it: pay that once at collection, not in a test
import torch.nn.functional as F

import edifice
from edifice.blocks.kv_cache import DynamicKVCache, StaticKVCache
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm.mamba import MambaState
from edifice_ssm.zamba import Zamba, ZambaHybridState

TINY = {
    "d_model": 16,
    "n_layers": 4,
    "d_in": 5,
    "d_state": 4,
    "d_conv": 3,
    "n_mamba_heads": 2,
    "n_heads": 2,
    "attn_layer_period": 2,
    "attn_layer_offset": 1,
    "d_ff": 24,
}


def _build(seed: int = 0, **overrides: object) -> Zamba:
    torch.manual_seed(seed)
    model = edifice.build("zamba", **{**TINY, **overrides})
    assert isinstance(model, Zamba)
    return model


def _x(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, TINY["d_in"], generator=torch.Generator().manual_seed(seed))


def test_schedule_and_one_shared_block() -> None:
    model = _build()
    assert [layer.hybrid for layer in model.layers] == [False, True, False, True]
    assert model.shared is not None
    attn = model.shared.self_attn
    assert attn.q_proj.in_features == 32 and attn.o_proj.out_features == 16  # reads [h, x_0], writes d
    assert attn.head_dim == 16 and attn.scale == pytest.approx((16 / 2) ** -0.5)
    assert sum("shared." in n for n, _ in model.named_parameters()) == 9  # one copy of the block
    explicit = _build(hybrid_layers=(0,))
    assert [layer.hybrid for layer in explicit.layers] == [True, False, False, False]
    plain = _build(hybrid_layers=())
    assert plain.shared is None and not any(layer.hybrid for layer in plain.layers)


def test_shared_block_reads_the_input_embeddings() -> None:
    # A hybrid layer's shared block sees x_0: zeroing the embedding half of its input changes the output.
    model = _build(seed=2).eval()
    x = _x(2, 6, seed=3)
    with torch.no_grad():
        base = model(x=x)
        h0 = model.input_proj(x)
        layer = model.layers[1]
        h1 = model.layers[0](h0)
        with_x0 = layer(h1, embeddings=h0, shared=model.shared)
        without = layer(h1, embeddings=torch.zeros_like(h0), shared=model.shared)
    assert not torch.allclose(with_x0, without)
    assert torch.isfinite(base).all()
    with pytest.raises(ValueError, match="hybrid layer needs embeddings"):
        layer(h1)


def test_step_reproduces_forward_with_one_cache_per_application() -> None:
    model = _build(seed=4).eval()
    x = _x(2, 11, seed=5)
    with torch.no_grad():
        want = model(x=x)
        for max_len, cache in ((None, DynamicKVCache), (11, StaticKVCache)):
            state = model.init_state(2, max_len=max_len)
            assert isinstance(state.layers[0], MambaState)
            hybrid = state.layers[1]
            assert isinstance(hybrid, ZambaHybridState) and isinstance(hybrid.attn, cache)
            assert hybrid.attn is not state.layers[3].attn
            pieces = []
            for start, stop in ((0, 4), (4, 5), (5, 6), (6, 11)):
                y, state = model.step(x[:, start:stop], state)
                pieces.append(y)
            assert_close(torch.cat(pieces, 1), want, SCAN, name=f"max_len={max_len}")


def test_padding_gives_the_unpadded_result() -> None:
    model = _build(seed=6).eval()
    x = _x(2, 7, seed=7)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :2] = False  # left padding of row 0
    mask[1, 7:] = False  # right padding of row 1
    padded = torch.zeros(2, 9, TINY["d_in"])
    padded[0, 2:], padded[1, :7] = x[0], x[1]
    with torch.no_grad():
        want = model(x=x)
        got = model(x=padded, attention_mask=mask)
    assert_close(got[0, 2:], want[0], SCAN)
    assert_close(got[1, :7], want[1], SCAN)


def test_grad_checkpointing_gives_identical_gradients() -> None:
    x = _x(2, 7, seed=8)
    grads = []
    for enable in (False, True):
        model = _build(seed=9).train()
        model.set_grad_checkpointing(enable)
        model(x=x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(n.startswith("shared.") for n in grads[0])
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], name=name)


def test_reset_parameters_follows_mamba_per_head() -> None:
    model = _build(seed=10, d_model=64, d_state=8, n_mamba_heads=4, vocab_size=300, n_heads=4, d_ff=128)
    mixer = model.layers[0].mamba
    h, P, N = 4, 32, 8
    assert mixer.A_log.shape == (h, P, N) and mixer.x_proj_weight.shape == (h, 4 + 2 * N, P)
    assert torch.allclose(mixer.A_log.exp(), torch.arange(1, N + 1, dtype=torch.float32).expand(h, P, N))
    assert torch.equal(mixer.D, torch.ones(h, P))
    dt = F.softplus(mixer.dt_proj_bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert abs(dt.log().mean().item() - (math.log(0.001) + math.log(0.1)) / 2) < 0.4
    bound = mixer.dt_rank**-0.5
    assert mixer.dt_proj_weight.abs().max() <= bound
    for w in (model.shared.self_attn.q_proj.weight, model.layers[1].linear.weight, model.embed_tokens.weight):
        assert abs(w.std().item() - 0.02) < 0.004


def test_config_validates_and_accepts_original_option_names() -> None:
    config = edifice.config("zamba", attention_every=3, attn_layer_offset=2, state_size=8, num_heads=2, conv_size=2)
    assert (config.attn_layer_period, config.d_state, config.n_heads, config.d_conv) == (3, 8, 2, 2)
    assert config.attn_head_dim == 64 and config.ffn_dim == 256
    with pytest.raises(edifice.ConfigError, match="attn_layer_offset"):
        edifice.config("zamba", attn_layer_period=3, attn_layer_offset=3)
    with pytest.raises(edifice.ConfigError, match="n_mamba_heads"):
        edifice.config("zamba", n_mamba_heads=3)
    with pytest.raises(edifice.ConfigError, match="hybrid_layers"):
        edifice.config("zamba", n_layers=4, hybrid_layers=(1, 4))
    with pytest.raises(edifice.ConfigError, match="hybrid_layers"):
        edifice.config("zamba", n_layers=4, hybrid_layers=(1, 1))
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("zamba", d_model=30, n_heads=8)
    with pytest.raises(edifice.ConfigError, match="activation"):
        edifice.config("zamba", activation="tanh")


def test_bad_inputs_raise_input_errors() -> None:
    model = _build().eval()
    with pytest.raises(edifice.InputError, match=r"zamba: input 'x' expected \[B, T, 5\]"):
        model(x=torch.randn(2, 4, 7))
    state = model.init_state(2)
    with pytest.raises(edifice.InputError, match="zamba: input 'x'"):
        model.step(torch.randn(2, 1, 3), state)
