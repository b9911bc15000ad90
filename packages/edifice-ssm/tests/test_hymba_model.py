"""hymba beyond the oracle: decoding with meta tokens at every prefix, padding, state layout, init, configs, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import edifice
from edifice.blocks.kv_cache import DynamicKVCache, StaticKVCache
from edifice.testing.tol import SCAN, assert_close
from edifice_ssm.hymba import Hymba, HymbaMixer, HymbaMixerState, HymbaSSMHeads, HymbaState
from edifice_ssm.mamba import MambaMixer

TOKENS = {"vocab_size": 30, "d_in": None}


def build(**overrides: Any) -> Hymba:
    torch.manual_seed(0)
    config = {**edifice.get_spec("hymba").tiny, "n_layers": 2, "global_layers": (1,), **overrides}
    model = edifice.build("hymba", **config).eval()
    assert isinstance(model, Hymba)
    return model


def inputs(model: Hymba, batch: int, T: int, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    if c.vocab_size is not None:
        return torch.randint(0, c.vocab_size, (batch, T), generator=gen)
    return torch.randn(batch, T, c.d_in or c.d_model, generator=gen)


def call(model: Hymba, u: Tensor, mask: Tensor | None = None) -> Tensor:
    out = model(**{model.primary_input: u, "attention_mask": mask})
    assert isinstance(out, Tensor)
    return out


@pytest.mark.parametrize(
    ("overrides", "pieces", "max_len"),
    [({}, (1,) * 7, None), (TOKENS, (4, 1, 2), 9), ({}, (7,), 7)],
    ids=["steps-features-dynamic", "prefill-tokens-static", "one-features-static"],
)
def test_step_equals_forward_at_every_prefix(
    overrides: dict[str, Any], pieces: tuple[int, ...], max_len: int | None
) -> None:
    model = build(**overrides)
    u = inputs(model, 2, sum(pieces))
    with torch.no_grad():
        full = call(model, u)
        state = model.init_state(2, max_len=max_len)
        assert isinstance(state, HymbaState) and state.meta_pending
        start, outs = 0, []
        for n in pieces:
            y, state = model.step(u[:, start : start + n], state)
            outs.append(y)
            start += n
            assert isinstance(state, HymbaState) and not state.meta_pending  # the prefill ran the meta tokens
    assert_close(torch.cat(outs, dim=1), full, SCAN, name="stepped")  # type: ignore[arg-type]
    assert torch.equal(state.position, torch.full((2,), sum(pieces) + model.config.n_meta_tokens))


def test_state_layout() -> None:
    model = build()
    c = model.config
    state = model.init_state(3, max_len=10, dtype=torch.bfloat16)
    layer = state.layers[0]
    assert isinstance(layer, HymbaMixerState)
    assert isinstance(layer.attn, StaticKVCache)
    assert layer.attn.keys.shape == (3, c.n_kv_heads, 10 + c.n_meta_tokens, c.qk_head_dim)  # M slots for meta tokens
    assert layer.attn.values.shape[-1] == c.d_inner // c.n_heads  # value heads are d_inner / n_heads wide
    assert layer.attn.keys.dtype == torch.bfloat16
    assert layer.ssm.ssm.shape == (3, c.d_inner, c.d_state) and layer.ssm.ssm.dtype == torch.float32
    assert isinstance(model.init_state(1).layers[0].attn, DynamicKVCache)


@pytest.mark.parametrize("overrides", [{}, TOKENS], ids=["features", "tokens"])
def test_left_and_right_padding_with_a_mask_equal_the_unpadded_run(
    overrides: dict[str, Any], padding_is_invisible: Callable[[nn.Module], None]
) -> None:
    padding_is_invisible(build(**overrides))


def test_batched_decoding_of_a_left_padded_prompt(left_padded_batch_decodes_alone: Callable[[nn.Module], None]) -> None:
    """Row 0's prompt is 2 positions shorter (left-padded); each row decodes as if it were alone, meta tokens too."""
    left_padded_batch_decodes_alone(build(**TOKENS))


def test_pooled_outputs_ignore_padding() -> None:
    model = build(output="last")
    u = inputs(model, 1, 6)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    with torch.no_grad():
        assert_close(call(model, u, mask), call(model, u[:, :4]), SCAN, name="last valid position")


def test_the_ssm_heads_are_mamba_without_its_output_projection() -> None:
    torch.manual_seed(2)
    heads = HymbaSSMHeads(8, d_state=4, expand=2, d_conv=3)
    mamba = MambaMixer(8, d_state=4, expand=2, d_conv=3)
    mamba.load_state_dict({**heads.state_dict(), "out_proj.weight": torch.eye(16, 8).T.contiguous()}, strict=True)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        y = heads(x)
        assert y.shape == (2, 5, 16)  # d_inner wide: the hybrid module projects after the average
        assert_close(y[..., :8], mamba(x), SCAN, name="Mamba with an identity-like out_proj")
    assert "out_proj.weight" not in heads.state_dict()


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = edifice.build("hymba", d_model=32, n_layers=2, n_heads=4, n_meta_tokens=64, **TOKENS)
    meta = model.meta_tokens.detach()
    assert abs(float(meta.std()) - 1.0) < 0.1 and abs(float(meta.mean())) < 0.1  # N(0, 1), the released code's randn
    assert abs(float(model.embed_tokens.weight.detach().std()) - 0.02) < 0.005  # type: ignore[union-attr]
    for block in model.layers:
        mixer = block.mixer
        assert isinstance(mixer, HymbaMixer)
        assert torch.equal(mixer.attn_norm.weight.detach(), torch.ones(64))  # β_1 = 1
        assert torch.equal(mixer.ssm_norm.weight.detach(), torch.ones(64))  # β_2 = 1
        A = -torch.exp(mixer.ssm.A_log.detach())
        torch.testing.assert_close(A[0], -torch.arange(1.0, 17.0))  # S4D-real, as Mamba
        dt = torch.nn.functional.softplus(mixer.ssm.dt_proj.bias.detach())  # Mamba's log-uniform Δ in [1e-3, 0.1]
        assert bool(((dt >= 0.001 * (1 - 1e-4)) & (dt <= 0.1 * (1 + 1e-4))).all())
    assert [b.mixer.attn.window for b in model.layers] == [None, None]  # two layers: first and last are global
    deep = edifice.config("hymba", n_layers=8)
    assert [deep.layer_window(i) for i in range(8)] == [None, 1024, 1024, None, 1024, 1024, 1024, None]
    # The released Hymba-1.5B config: global_attn_idx [0, 15, 31] and its kv_reuse_group, pairs of local layers.
    released = edifice.config("hymba", n_layers=32)
    assert [i for i in range(32) if released.layer_window(i) is None] == [0, 15, 31]
    pairs = [(i, i + 1) for i in range(1, 15, 2)] + [(16, 17, 18)] + [(i, i + 1) for i in range(19, 31, 2)]
    assert released.kv_groups == tuple(pairs)


def test_cross_layer_kv_sharing_saves_cache_and_projections_and_decodes_exactly(
    padding_is_invisible: Callable[[nn.Module], None],
) -> None:
    # Layer 0 global; local layers 1, 2, 3 form one group (a run of three): 1 produces, 2 and 3 reuse its keys.
    options = {"n_layers": 4, "global_layers": (0,), "window": 16}
    shared, alone = build(**options), build(**options, kv_reuse_groups=())
    assert shared.config.kv_groups == ((1, 2, 3),) and alone.config.kv_groups == ()
    assert [b.mixer.attn.k_proj is None for b in shared.layers] == [False, False, True, True]
    attn = alone.layers[0].mixer.attn
    kv_params = attn.k_proj.weight.numel() + attn.v_proj.weight.numel()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(alone) - count(shared) == 2 * kv_params  # two consumers without K/V projections
    caches = [layer.attn for layer in shared.init_state(2, max_len=8).layers]
    assert [c is not None for c in caches] == [True, True, False, False]  # 2 KV caches instead of 4

    # A consumer attends to its producer's rotated keys and values (its own queries): checked by hand.
    seen: dict[int, tuple[Tensor, Tensor]] = {}
    hooks = [
        b.mixer.attn.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, (a[0], out[0])))
        for i, b in enumerate(shared.layers)
    ]
    u = inputs(shared, 2, 7)
    with torch.no_grad():
        full = call(shared, u)
    for hook in hooks:
        hook.remove()
    producer, consumer = shared.layers[1].mixer.attn, shared.layers[3].mixer.attn
    x_p, (x_c, y_c) = seen[1][0], seen[3]
    B, L = x_p.shape[:2]
    cos, sin = producer.rope(torch.arange(L))
    q = consumer._heads(consumer.q_proj, x_c, 2, consumer.head_dim)
    k = producer._heads(producer.k_proj, x_p, 1, producer.head_dim)
    v = producer._heads(producer.v_proj, x_p, 1, producer.v_head_dim)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    scores = (q @ k.transpose(-1, -2)) / consumer.head_dim**0.5  # window 16 > L: causal only
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    want = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, -1)
    assert_close(y_c, want, SCAN, name="consumer attention over the producer's keys")

    with torch.no_grad():  # decoding: the consumers read the producer's cache
        state = shared.init_state(2, max_len=7)
        outs = [shared.step(u[:, :3], state)[0]] + [shared.step(u[:, t : t + 1], state)[0] for t in range(3, 7)]
    assert_close(torch.cat(outs, 1), full, SCAN, name="stepped with shared KV")  # type: ignore[arg-type]
    padding_is_invisible(shared)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"n_heads": 3}, "n_heads"),
        ({"n_kv_heads": 3, "n_heads": 4}, "n_kv_heads"),
        ({"head_dim": 5}, "even for the rotary embedding"),
        ({"window": 0}, "window"),
        ({"global_layers": (5,)}, "global_layers"),
        ({"n_meta_tokens": -1}, "n_meta_tokens"),
        ({"dt_min": 0.5}, "must be <= dt_max"),
        ({"kv_reuse_groups": ((0,),)}, "kv_reuse_groups"),
        ({"kv_reuse_groups": ((0, 1),)}, "kv_reuse_groups"),
    ],
)
def test_invalid_configs_raise_config_errors(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(edifice.ConfigError, match=match):
        edifice.config("hymba", **{**edifice.get_spec("hymba").tiny, **overrides})


def test_original_option_names_are_accepted() -> None:
    config = edifice.config(
        "hymba", embed_dim=5, hidden_size=32, state_size=8, num_layers=2, num_heads=4, num_meta_tokens=3,
        window_size=16, dropout=0.1,
    )  # fmt: skip
    assert (config.d_in, config.d_model, config.d_state, config.n_layers, config.n_heads) == (5, 32, 8, 2, 4)
    assert (config.n_meta_tokens, config.window, config.dropout) == (3, 16, 0.1)


def test_bad_inputs_raise_input_errors() -> None:
    model = build()
    with pytest.raises(edifice.InputError, match=r"input 'x' expected \[B, T, 6\]"):
        model(torch.randn(2, 5, 7))
    mixer = model.layers[0].mixer
    with pytest.raises(ValueError, match="positions are required with a KV cache state"):
        mixer(torch.randn(1, 2, 16), state=mixer.init_state(1))
    with pytest.raises(ValueError, match="must divide d_inner"):
        HymbaMixer(8, n_heads=3, head_dim=4)


def test_gradient_checkpointing_keeps_the_gradients() -> None:
    # Three local layers share one KV group: checkpointed consumers still reach their producer's keys and values.
    model = build(n_layers=3, global_layers=()).train()
    assert model.config.kv_groups == ((0, 1, 2),)
    u = inputs(model, 2, 6)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        call(model, u).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(list(model.parameters()))  # the meta tokens and both branches all get gradients
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
