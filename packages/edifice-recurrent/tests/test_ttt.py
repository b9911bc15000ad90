"""ttt: the TTT layer against an fp64 oracle of the paper's equations, the inner step, decoding, padding, config, init.

The oracle recomputes a TTT layer from its weights with independent code (Sun et al. 2024): the views θ_Q, θ_K, θ_V
(with the Mamba backbone's causal convolutions as a padded ``F.conv1d``, RoPE by its formula), the learnable inner
learning rate η(x) = η_base σ(θ_lr x) / D and the per-position factor, and then mini-batch TTT one token at a time in
plain Python, every inner gradient obtained by ``torch.autograd.grad`` of ``½‖f(k; W) - v‖²`` at the mini-batch's
starting weights, ``f(x) = x + LN(f_res(x))`` (eqs. 1-5, §2.4, §2.7).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice import ops
from edifice.ops.memory_gd import memory_apply, memory_loss
from edifice.outputs import tensor_leaves
from edifice.testing import mutate_op, signature
from edifice.testing.tol import SCAN, assert_close
from edifice_recurrent.ttt import TTT, TTTLayer

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection

TINY: dict[str, Any] = {"d_model": 16, "n_layers": 2, "n_heads": 2, "mini_batch_size": 4, "d_ff": 32, "d_in": 6}
FP64 = {"atol": 1e-7, "rtol": 1e-6}  # fp64 throughout, except the RoPE tables (fp32 by design)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def perturbed_layer(seed: int, **options: Any) -> TTTLayer:
    """A TTT layer in fp64 whose every parameter was moved off its initial value (so none is inert)."""
    torch.manual_seed(seed)
    layer = TTTLayer(16, 2, 8, mini_batch_size=4, **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
        layer.lr_bias.add_(1.0)  # larger inner steps than at init, so the update is visible
    return layer


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Causal depthwise convolution of ``x [B, T, C]`` (weight ``[C, K]``): left zero padding of K - 1, ``F.conv1d``."""
    K = weight.shape[1]
    y = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), weight[:, None], bias, groups=x.shape[-1])
    return y.transpose(1, 2)


def rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE of ``x [B, T, H, D]`` at integer positions ``[T]``: features i and i + D/2 rotate by pos·base^(-2i/D)."""
    D = x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos.double()[:, None] * inv  # (T, D/2)
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def inner_model(params: list[torch.Tensor], x: torch.Tensor, ln: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``f(x) = x + LN(f_res(x))``: f_res linear ``x W + b`` or ``GELU_tanh(x W1 + b1) W2 + b2`` (§2.7)."""
    z = x @ params[0] + params[1]
    if len(params) == 4:
        z = F.gelu(z, approximate="tanh") @ params[2] + params[3]
    z = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-6)
    return x + z * ln[0] + ln[1]


def oracle(layer: TTTLayer, x: torch.Tensor) -> torch.Tensor:
    """The TTT layer's output on ``x [B, T, d]`` from the paper's equations, token by token, in fp64."""
    B, T, _ = x.shape
    H, D, C = layer.n_heads, layer.head_dim, layer.mini_batch_size
    xq = x @ layer.q_proj.weight.T
    if layer.convs is not None:  # Mamba backbone: shared θ_Q/θ_K, then one causal convolution each
        conv, W = layer.convs.conv, layer.width  # conv_q on the first W channels, conv_k on the next W
        assert conv.bias is not None
        q = causal_conv(xq, conv.weight[:W], conv.bias[:W])
        k = causal_conv(xq, conv.weight[W:], conv.bias[W:])
    else:
        assert layer.k_proj is not None
        q, k = xq, x @ layer.k_proj.weight.T
    v = x @ layer.v_proj.weight.T
    q, k, v = (t.reshape(B, T, H, D) for t in (q, k, v))
    pos = torch.arange(T) % C
    if layer.rope is not None:
        q, k = rope(q, pos, layer.rope.base), rope(k, pos, layer.rope.base)
    eta_x = layer.base_lr * torch.sigmoid(x @ layer.lr_weight.T + layer.lr_bias) / D  # (B, T, H)
    eta_t = (1.0 / (pos + 1).double() + layer.token_offset[pos]).clamp_min(0.0)  # (T,)
    mem = layer.memory
    out = torch.zeros(B, T, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            ln = (mem.norm_weight[h], mem.norm_bias[h])  # type: ignore[index]
            W = [p[h].detach() for p in mem.initial() if p is not None]
            for start in range(0, T, C):
                anchor, total = W, [torch.zeros_like(w) for w in W]
                for t in range(start, min(start + C, T)):
                    with torch.enable_grad():
                        leaves = [w.clone().requires_grad_(True) for w in anchor]
                        loss = 0.5 * (inner_model(leaves, k[b, t, h], ln) - v[b, t, h]).square().sum()  # eq. 4
                        grads = torch.autograd.grad(loss, leaves)
                    total = [s + eta_x[b, t, h] * g for s, g in zip(total, grads, strict=True)]
                    W_t = [w - eta_t[t] * s for w, s in zip(anchor, total, strict=True)]  # mini-batch GD
                    out[b, t, h] = inner_model(W_t, q[b, t, h], ln)  # eq. 5
                W = W_t
    y = F.layer_norm(out.reshape(B, T, H * D), (H * D,), layer.post_norm.weight, layer.post_norm.bias, 1e-6)
    if layer.g_proj is not None:
        y = F.gelu(x @ layer.g_proj.weight.T, approximate="tanh") * y
    return y @ layer.o_proj.weight.T


def check_layer(**options: Any) -> None:
    layer = perturbed_layer(0, **options)
    x = randn(2, 11, 16, seed=1, dtype=torch.float64)
    with torch.no_grad():
        want = oracle(layer, x)
        torch.testing.assert_close(layer(x), want, **FP64)  # the chunked dual form
        state = layer.init_state(2, dtype=torch.float64)
        pieces = [layer(x[:, :5], state=state)] + [layer(x[:, t : t + 1], state=state) for t in range(5, 11)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, **FP64)  # the recurrent form


@signature("ttt")
@pytest.mark.parametrize(
    "options",
    [
        {"variant": "linear"},
        {"variant": "mlp", "inner_size": 12},
        {"variant": "linear", "share_qk": False, "output_gate": False, "rope": False},
    ],
    ids=["linear-mamba", "mlp-mamba", "linear-transformer"],
)
def test_ttt_layer_matches_the_papers_equations(options: dict[str, Any]) -> None:
    check_layer(**options)


def test_the_inner_step_lowers_the_reconstruction_loss_of_its_mini_batch() -> None:
    for variant in ("linear", "mlp"):
        layer = perturbed_layer(2, variant=variant)
        x = randn(2, 4, 16, seed=3, dtype=torch.float64)  # one mini-batch
        with torch.no_grad():
            in_chunk = torch.arange(4).expand(2, 4)
            q, k, v, lr, scale = layer._views(x, in_chunk, None, None)
            mem = layer.memory
            W0 = mem.expanded(2)
            _, W1, _ = ops.memory_gd(q, k, v, W0, lr, token_scale=scale, **mem.op_kwargs())

            def loss(weights: tuple, mem: Any = mem, k: torch.Tensor = k, v: torch.Tensor = v) -> float:
                y = memory_apply(weights, k.transpose(1, 2), **mem._spec())
                return float(memory_loss(y, v.transpose(1, 2)).sum().detach())

        before, after = loss(W0), loss(W1)
        assert after < before, (variant, before, after)


def test_mutating_the_op_breaks_the_signature_test() -> None:
    with mutate_op("memory_gd"), pytest.raises(AssertionError):
        check_layer(variant="linear")


def build(seed: int = 0, **overrides: Any) -> TTT:
    torch.manual_seed(seed)
    model = edifice.build("ttt", **{**TINY, **overrides})
    assert isinstance(model, TTT)
    return model


@pytest.mark.parametrize("variant", ["linear", "mlp"])
def test_step_reproduces_forward_across_mini_batch_boundaries(variant: str) -> None:
    model = build(4, variant=variant).eval()
    x = randn(2, 13, 6, seed=5)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2)
        shapes = [tuple(t.shape) for t in _leaves(state)]
        pieces = []
        for a, b in ((0, 3), (3, 4), (4, 9), (9, 10), (10, 13)):  # prefill ending mid-batch, steps, chunks
            y, state = model.step(x[:, a:b], state)
            pieces.append(y)
        assert [tuple(t.shape) for t in _leaves(state)] == shapes  # constant size
    assert_close(torch.cat(pieces, 1), want, SCAN)
    memory = state.layers[0].memory
    assert all(t.dtype == torch.float32 for t in memory.anchor) and memory.count.tolist() == [13, 13]


def _leaves(state: Any) -> list[torch.Tensor]:
    return [t for _, t in tensor_leaves(state)]


def test_padding_left_right_and_padded_prefill() -> None:
    model = build(6).eval()
    x = randn(2, 10, 6, seed=7)
    left = torch.tensor([[False] * 3 + [True] * 7, [True] * 10])
    right = torch.tensor([[True] * 10, [True] * 6 + [False] * 4])
    with torch.no_grad():
        alone_left, alone_right = model(x=x[:1, 3:]), model(x=x[1:, :6])
        assert_close(model(x=x, attention_mask=left)[0, 3:], alone_left[0], SCAN)
        assert_close(model(x=x, attention_mask=right)[1, :6], alone_right[0], SCAN)
        state = model.init_state(2)
        first, _ = model.step(x[:, :5], state, attention_mask=left[:, :5])
        rest, _ = model.step(x[:, 5:], state)
    assert_close(torch.cat([first, rest], 1)[0, 3:], alone_left[0], SCAN)


def test_initialisation_follows_the_reference_implementation() -> None:
    model = edifice.build("ttt", d_model=64, n_layers=1, n_heads=2, variant="mlp", d_ff=0)
    layer = model.layers[0].mixer
    assert isinstance(layer, TTTLayer)
    mem = layer.memory
    assert mem.W2 is not None and mem.b1 is not None and mem.norm_weight is not None and mem.norm_bias is not None
    for w in (mem.W1, mem.W2, layer.lr_weight, layer.q_proj.weight, layer.o_proj.weight):
        assert abs(w.std().item() - 0.02) < 0.003, w.shape
    assert mem.W1.shape == (2, 32, 128) and mem.W2.shape == (2, 128, 32)  # TTT-MLP hidden 4 · head_dim
    assert not mem.b1.any() and not layer.lr_bias.any() and not layer.token_offset.any()
    assert torch.equal(mem.norm_weight, torch.ones(2, 32)) and not mem.norm_bias.any()
    # The initial inner learning rate is η_base σ(0) / D = 0.5 / D and the position factor 1 / i.
    x = torch.zeros(1, 4, 64)
    _, _, _, lr, scale = layer._views(x, torch.arange(4).expand(1, 4), None, None)
    assert torch.allclose(lr, torch.full_like(lr, 0.5 / 32))
    assert torch.allclose(scale[0, :, 0], 1.0 / torch.arange(1, 5))


def test_config_errors_and_original_option_names() -> None:
    config = edifice.config("ttt", ttt_layer_type="mlp", use_gate=False, conv_kernel=3, inner_size=10, hidden_size=32)
    assert (config.variant, config.output_gate, config.conv_size, config.inner_hidden, config.d_model) == (
        "mlp",
        False,
        3,
        10,
        32,
    )
    with pytest.raises(edifice.ConfigError, match="variant"):
        edifice.config("ttt", variant="rnn")
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("ttt", d_model=30, n_heads=4)
    with pytest.raises(edifice.ConfigError, match="head_dim"):
        edifice.config("ttt", d_model=12, n_heads=4)  # head_dim 3 cannot be rotated
    with pytest.raises(edifice.ConfigError, match="mini_batch_size"):
        edifice.config("ttt", mini_batch_size=0)
    with pytest.raises(ValueError, match="variant must be"):
        TTTLayer(8, 2, 4, variant="rnn")
    assert math.isclose(edifice.config("ttt", d_model=48).ffn_hidden, 128)
