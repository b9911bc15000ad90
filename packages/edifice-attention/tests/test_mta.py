"""Tests of ``mta`` (Multi-Token Attention, Golovneva et al. 2025).

Signature: a layer's output equals, in fp64, the paper's equations computed by the loop oracle
(:func:`edifice.ops.multi_token_attention.multi_token_attention_naive`: eq. 1-2 key-query convolution with the
``Mask_0``/``Mask_-∞`` masking, §3.2 post-softmax head mixing) followed by §3.3's per-head norm and ``1 - λ_init``
scaling; the ``multi_token_attention`` mutation (no convolutions) breaks it. Property: identity kernels give plain
causal softmax attention. Decoding: ``step`` (prefill, then one token at a time, also with a padded prompt)
reproduces ``forward`` at every prefix; the state keeps the last ``c_q - 1`` queries.
"""

from __future__ import annotations

import pytest
import torch

import edifice
from edifice.ops.multi_token_attention import multi_token_attention_naive
from edifice.testing import mutate_op, signature
from edifice_attention.mta import MTAAttention, MTAState

TINY = {"d_model": 32, "n_heads": 4, "d_ff": 48, "vocab_size": 50, "c_q": 3, "c_k": 4, "kernel_init": "normal"}


def build(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return edifice.build("mta", **{**TINY, "n_layers": 2, "kq_conv_every": 1, **overrides}).eval()


def perturb(layer: MTAAttention) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for w in (layer.kq_weight, layer.head_weight, layer.head_norm.weight):
            if w is not None:
                w.add_(0.3 * torch.randn(w.shape, generator=gen, dtype=w.dtype))


@signature("mta")
def test_layer_matches_the_papers_equations_fp64() -> None:
    layer = build(n_kv_heads=2).layers[1].mixer.double()
    assert isinstance(layer, MTAAttention)
    perturb(layer)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
        q, k, v = layer._qkv(x, mask=None, positions=None, state=None)  # projections and RoPE: the generic part
        heads = multi_token_attention_naive(q, k, v, layer.kq_weight, layer.head_weight, scale=layer.scale)
        h32 = heads.float()  # core's RMSNorm keeps fp32 statistics, also for fp64 inputs
        rms = (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.head_norm.weight.float()).double()
        want = layer.o_proj((rms * (1 - layer.lambda_init)).transpose(1, 2).reshape(2, 9, -1))
    assert layer.lambda_init == pytest.approx(0.8 - 0.6 * torch.exp(torch.tensor(-0.3)).item())
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_signature_fails_without_the_convolutions() -> None:
    with mutate_op("multi_token_attention"), pytest.raises(AssertionError):
        test_layer_matches_the_papers_equations_fp64()


def test_identity_kernels_equal_plain_softmax_attention() -> None:
    model = build(kernel_init="identity")
    plain = build(kernel_init="identity", c_q=1, c_k=1, c_h=1)  # 1x1 identity kernels: the same weights otherwise
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "_weight" not in k}, strict=False)
    for layer in plain.layers:
        layer.mixer.kq_weight = None
        layer.mixer.head_weight = None  # ops.sdpa path
    ids = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids), plain(input_ids=ids), atol=1e-5, rtol=1e-5)
        perturb(model.layers[0].mixer)
        assert not torch.allclose(model(input_ids=ids), plain(input_ids=ids), atol=1e-3)


@pytest.mark.parametrize("T", [1, 13])
def test_step_reproduces_forward_at_every_prefix(T: int) -> None:
    model = build(n_layers=3, kq_conv_every=2, head_conv_every=1)
    for layer in model.layers:
        perturb(layer.mixer)
    ids = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(input_ids=ids)
        for prefill in sorted({1, min(5, T)}):
            state = model.init_state(2, max_len=T + 2)
            assert isinstance(state.layers[1], MTAState) and state.layers[1].queries.shape[2] == 2  # c_q - 1 rows
            parts = [model.step(ids[:, :prefill], state)[0]]
            parts += [model.step(ids[:, t : t + 1], state)[0] for t in range(prefill, T)]
            torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_is_exact() -> None:
    model = build()
    for layer in model.layers:
        perturb(layer.mixer)
    ids = torch.randint(0, 50, (1, 7), generator=torch.Generator().manual_seed(5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    with torch.no_grad():
        want = model(input_ids=ids)
        torch.testing.assert_close(model(input_ids=padded, attention_mask=mask)[:, 3:], want, atol=1e-5, rtol=1e-5)
        state = model.init_state(1, max_len=12)
        first = model.step(padded[:, :5], state, attention_mask=mask[:, :5])[0][:, 3:]
        rest = [model.step(padded[:, t : t + 1], state)[0] for t in range(5, 10)]
        torch.testing.assert_close(torch.cat([first, *rest], dim=1), want, atol=1e-5, rtol=1e-5)


def test_kernels_receive_gradients() -> None:
    model = build().train()
    model(input_ids=torch.randint(0, 50, (2, 6))).sum().backward()
    mixer = model.layers[0].mixer
    assert mixer.kq_weight.grad is not None and mixer.kq_weight.grad.abs().sum() > 0
    assert mixer.head_weight.grad is not None and mixer.head_weight.grad.abs().sum() > 0


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="c_h"):
        edifice.build("mta", d_model=32, n_heads=4, c_h=3)
    with pytest.raises(ValueError, match="window"):
        edifice.build("mta", d_model=32, n_heads=4, window=4)
    with pytest.raises(ValueError, match="c_q"):
        edifice.build("mta", d_model=32, n_heads=4, c_q=0)
