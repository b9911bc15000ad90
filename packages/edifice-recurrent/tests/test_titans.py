"""titans (MAG, MAL): the layer against an fp64 oracle of the paper's equations, the surprise step, decoding, padding.

The oracle recomputes a MAG layer from its weights with independent code (Behrouz et al. 2025): x̃ = [p ‖ x] (eq. 19);
the memory's q, k, v as matrix products, padded ``F.conv1d``, SiLU and ℓ2 norm (§4.4); then the long-term memory one
token at a time, ``S_t = η_t S_{t-1} - θ_t ∇ℓ``, ``M_t = (1 - α_t) M_{t-1} + S_t`` with ``ℓ = ‖M(k_t) - v_t‖²`` and
every gradient from ``torch.autograd.grad`` at the memory of the chunk's start (eqs. 8-14, §3.2); the read-out
``M_t(q_t)`` (eq. 15); the sliding-window attention as an explicit softmax over the persistent keys and the last
``window`` rotated keys; and MAG's gate ``RMSNorm(y) ⊙ σ(RMSNorm(M(x̃)))`` (§4.2), or MAL's attention over the
normalised read-outs ``RMSNorm(M(x̃))`` (§4.3).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice import ops
from edifice.ops.memory_gd import memory_apply, memory_loss
from edifice.outputs import tensor_leaves
from edifice.testing import CHECKS, check_architecture, mutate_op, signature
from edifice.testing.tol import SCAN, assert_close
from edifice_recurrent.titans import Titans, TitansMixer

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection

TINY: dict[str, Any] = {
    "d_model": 16,
    "n_layers": 2,
    "n_heads": 2,
    "memory_size": 16,
    "mini_batch_size": 4,
    "n_persistent": 2,
    "window_size": 6,
    "d_ff": 32,
    "d_in": 6,
}
FP64 = {"atol": 1e-6, "rtol": 1e-5}  # fp64 throughout, except the RoPE tables (fp32 by design)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def perturbed_layer(seed: int, **options: Any) -> TitansMixer:
    """A MAG layer in fp64 whose every parameter was moved off its initial value."""
    torch.manual_seed(seed)
    kwargs = {"memory_hidden": 12, "mini_batch_size": 4, "n_persistent": 2, "window_size": 5, **options}
    layer = TitansMixer(16, 2, 8, **kwargs).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
        layer.gate_proj.bias[:2].add_(2.0)  # larger inner steps than at init, so the update is visible
        layer.memory_lr = 4.0
    return layer


def causal_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution of ``x [B, T, C]`` (no bias): left zero padding of K - 1, then ``F.conv1d``."""
    K = weight.shape[1]
    return F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), weight[:, None], groups=x.shape[-1]).transpose(1, 2)


def rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE of ``x [B, T, H, D]`` at positions ``[T]``: features i and i + D/2 rotate by pos·base^(-2i/D)."""
    D = x.shape[-1]
    ang = pos.double()[:, None] * base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def memory_model(params: list[torch.Tensor], x: torch.Tensor, ln: tuple | None) -> torch.Tensor:
    """``M(x) = x + LN(W2 GELU(W1 x))`` (or the bare MLP / linear map without ``ln``)."""
    z = x @ params[0]
    if len(params) == 2:
        z = F.gelu(z) @ params[1]
    if ln is None:
        return z
    z = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-6)
    return x + z * ln[0] + ln[1]


def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) * weight


def oracle(layer: TitansMixer, x: torch.Tensor) -> torch.Tensor:
    """The MAG layer's output on ``x [B, T, d]`` from the paper's equations, in fp64."""
    B, T, _ = x.shape
    H, D = layer.n_heads, layer.head_dim
    C, n_p, w = layer.memory.chunk_size, layer.persistent.shape[0], layer.window_size
    xt = torch.cat([layer.persistent.expand(B, -1, -1), x], 1)  # x̃ = [p ‖ x], eq. 19
    n = n_p + T
    qkv = (xt @ layer.mem_qkv.weight.T).chunk(3, -1)
    q, k, v = (
        F.silu(causal_conv(f, c)).reshape(B, n, H, D)
        for f, c in zip(qkv, layer.mem_convs.conv.weight.chunk(3), strict=True)
    )
    q, k = (t / torch.sqrt(t.square().sum(-1, keepdim=True) + 1e-6) for t in (q, k))
    g = xt @ layer.gate_proj.weight.T + layer.gate_proj.bias
    theta = layer.memory_lr * torch.sigmoid(g[..., :H]) / D
    alpha, eta = torch.sigmoid(g[..., H : 2 * H]), torch.sigmoid(g[..., 2 * H :])
    mem = layer.memory
    y_mem = torch.zeros(B, n, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            ln = None if mem.norm_weight is None else (mem.norm_weight[h], mem.norm_bias[h])  # type: ignore[index]
            M = [p[h].detach() for p in mem.initial() if p is not None]
            S = [torch.zeros_like(m) for m in M]
            anchor = M
            for t in range(n):
                if t % C == 0:
                    anchor = M  # §3.2: the chunk's gradients are taken at M_{t'}
                with torch.enable_grad():
                    leaves = [m.clone().requires_grad_(True) for m in anchor]
                    loss = (memory_model(leaves, k[b, t, h], ln) - v[b, t, h]).square().sum()  # eq. 12
                    grads = torch.autograd.grad(loss, leaves)
                if layer.momentum:
                    S = [eta[b, t, h] * s - theta[b, t, h] * gr for s, gr in zip(S, grads, strict=True)]  # eq. 14
                else:
                    S = [-theta[b, t, h] * gr for gr in grads]
                M = [(1 - alpha[b, t, h]) * m + s for m, s in zip(M, S, strict=True)]  # eq. 13
                y_mem[b, t, h] = memory_model(M, q[b, t, h], ln)  # eq. 15
    read = y_mem.reshape(B, n, H * D)
    # Sliding-window attention over x̃ (MAG) or over MAL's RMSNorm(M(x̃)): prefix keys always visible, the others
    # rotated and windowed.
    attn_in = xt if layer.variant == "mag" else rms(read, layer.mem_norm.weight)
    aq, ak, av = (t.reshape(B, n, H, D) for t in (attn_in @ layer.attn_qkv.weight.T).chunk(3, -1))
    pk, pv = ak[:, :n_p], av[:, :n_p]
    aq, ak, av = aq[:, n_p:], ak[:, n_p:], av[:, n_p:]
    if layer.rope is not None:
        pos = torch.arange(T)
        aq, ak = rope(aq, pos, layer.rope.base), rope(ak, pos, layer.rope.base)
    y_attn = torch.zeros(B, T, H, D, dtype=torch.float64)
    for t in range(T):
        lo = max(0, t - w + 1)
        keys = torch.cat([pk, ak[:, lo : t + 1]], 1)  # (B, L, H, D)
        values = torch.cat([pv, av[:, lo : t + 1]], 1)
        scores = torch.einsum("bhd,blhd->bhl", aq[:, t], keys) / D**0.5
        y_attn[:, t] = torch.einsum("bhl,blhd->bhd", scores.softmax(-1), values)
    y_attn = y_attn.reshape(B, T, H * D)
    if layer.variant == "mal":  # MAL, §4.3: o = SW-Attn(M(x̃)), normalised before §4.4's gate
        z = y_attn if layer.out_norm is None else rms(y_attn, layer.out_norm.weight)
        return output_projection(layer, z, x)
    assert layer.attn_norm is not None
    gated = rms(y_attn, layer.attn_norm.weight) * torch.sigmoid(rms(read[:, n_p:], layer.mem_norm.weight))  # MAG
    return output_projection(layer, gated, x)


def output_projection(layer: TitansMixer, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """§4.4: ``W_O (z ⊙ SiLU(x W_G))``, the gate a linear layer of the mixer's input (none without ``output_gate``)."""
    if layer.out_gate is not None:
        z = z * F.silu(x @ layer.out_gate.weight.T)
    return z @ layer.o_proj.weight.T


def oracle_mac(layer: TitansMixer, x: torch.Tensor) -> torch.Tensor:
    """The MAC layer's output on ``x [B, T, d]`` from the paper's equations (§4.1), token by token, in fp64.

    Per segment of ``window`` positions: ``h_t = M*_{s-1}(q_t)`` with the memory of the segment's start;
    ``y_t = Attn([p ‖ h ‖ x])`` causal inside the segment, ``h_j`` and ``x_j`` both at position ``j``; the
    memory learns ``y`` (its q, k, v, gates come from ``y``); ``o_t = RMSNorm(y_t) ⊙ σ(RMSNorm(M*_t(y_t)))``.
    """
    B, T, d = x.shape
    H, D = layer.n_heads, layer.head_dim
    C, n_p, L = layer.memory.chunk_size, layer.persistent.shape[0], layer.window_size
    mem = layer.memory
    lns = [None if mem.norm_weight is None else (mem.norm_weight[h], mem.norm_bias[h]) for h in range(H)]
    start = [p.detach() for p in mem.initial() if p is not None]
    M = [[[w[h] for w in start] for h in range(H)] for _ in range(B)]
    S = [[[torch.zeros_like(w[h]) for w in start] for h in range(H)] for _ in range(B)]
    anchor = [[list(m) for m in row] for row in M]
    seg_M = M
    ys = torch.zeros(B, T, d, dtype=torch.float64)
    out = torch.zeros(B, T, d, dtype=torch.float64)
    seg_tokens: list[torch.Tensor] = []
    assert layer.retrieve_q is not None and layer.attn_norm is not None
    for t in range(T):
        if t % L == 0:
            seg_M, seg_tokens = [[list(m) for m in row] for row in M], []
        qr = F.silu(x[:, t] @ layer.retrieve_q.weight.T).reshape(B, H, D)
        qr = qr / torch.sqrt(qr.square().sum(-1, keepdim=True) + 1e-6)
        retrieved = [[memory_model(seg_M[b][h], qr[b, h], lns[h]) for h in range(H)] for b in range(B)]
        h_t = torch.stack([torch.cat(row) for row in retrieved])  # h_t = M*_{s-1}(q_t), (B, d)
        seg_tokens += [h_t, x[:, t]]  # [p ‖ h ‖ x], interleaved by position
        seq = torch.cat([layer.persistent.expand(B, -1, -1), torch.stack(seg_tokens, 1)], 1)
        aq, ak, av = (f.reshape(B, seq.shape[1], H, D) for f in (seq @ layer.attn_qkv.weight.T).chunk(3, -1))
        if layer.rope is not None:
            pos = torch.arange(t - len(seg_tokens) // 2 + 1, t + 1).repeat_interleave(2)
            aq = torch.cat([aq[:, :n_p], rope(aq[:, n_p:], pos, layer.rope.base)], 1)
            ak = torch.cat([ak[:, :n_p], rope(ak[:, n_p:], pos, layer.rope.base)], 1)
        scores = torch.einsum("bhd,blhd->bhl", aq[:, -1], ak) / D**0.5  # the query of x_t sees everything before it
        ys[:, t] = torch.einsum("bhl,blhd->bhd", scores.softmax(-1), av).reshape(B, d)  # y_t = Attn(...)
        # Eq. 24: the memory learns y -- q, k, v by the convolution over y so far, SiLU, ℓ2; gates from y_t.
        qkv = (ys[:, : t + 1] @ layer.mem_qkv.weight.T).chunk(3, -1)
        q, k, v = (
            F.silu(causal_conv(f, c)[:, -1]).reshape(B, H, D)
            for f, c in zip(qkv, layer.mem_convs.conv.weight.chunk(3), strict=True)
        )
        q, k = (u / torch.sqrt(u.square().sum(-1, keepdim=True) + 1e-6) for u in (q, k))
        g = ys[:, t] @ layer.gate_proj.weight.T + layer.gate_proj.bias
        theta = layer.memory_lr * torch.sigmoid(g[:, :H]) / D
        alpha, eta = torch.sigmoid(g[:, H : 2 * H]), torch.sigmoid(g[:, 2 * H :])
        read = torch.zeros(B, H, D, dtype=torch.float64)
        for b in range(B):
            for h in range(H):
                if t % C == 0:
                    anchor[b][h] = M[b][h]  # §3.2: the chunk's gradients are taken at M_{t'}
                with torch.enable_grad():
                    leaves = [m.clone().requires_grad_(True) for m in anchor[b][h]]
                    loss = (memory_model(leaves, k[b, h], lns[h]) - v[b, h]).square().sum()  # eq. 12
                    grads = torch.autograd.grad(loss, leaves)
                if layer.momentum:
                    S[b][h] = [eta[b, h] * m - theta[b, h] * gr for m, gr in zip(S[b][h], grads, strict=True)]
                else:
                    S[b][h] = [-theta[b, h] * gr for gr in grads]  # eq. 14
                M[b][h] = [(1 - alpha[b, h]) * m + u for m, u in zip(M[b][h], S[b][h], strict=True)]  # eq. 13
                read[b, h] = memory_model(M[b][h], q[b, h], lns[h])  # M*_t(y_t)
        gated = rms(ys[:, t], layer.attn_norm.weight) * torch.sigmoid(rms(read.reshape(B, d), layer.mem_norm.weight))
        out[:, t] = output_projection(layer, gated, x[:, t])  # o_t = y_t ⊗ M*_t(y_t), MAG's gate for ⊗
    return out


def check_layer(**options: Any) -> None:
    layer = perturbed_layer(0, **options)
    x = randn(2, 11, 16, seed=1, dtype=torch.float64)
    with torch.no_grad():
        want = oracle_mac(layer, x) if layer.variant == "mac" else oracle(layer, x)
        torch.testing.assert_close(layer(x), want, **FP64)  # the chunked form
        state = layer.init_state(2, dtype=torch.float64)
        positions = torch.arange(11).expand(2, 11)
        pieces = [layer(x[:, :5], state=state, positions=positions[:, :5])]
        pieces += [layer(x[:, t : t + 1], state=state, positions=positions[:, t : t + 1]) for t in range(5, 11)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, **FP64)  # the recurrent form


BARE = {"memory_norm": False, "rope": False, "n_persistent": 0, "output_gate": False}


@signature("titans")
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"memory_depth": 1, "momentum": False},
        BARE,
        {"variant": "mal"},
        {"variant": "mal", "memory_depth": 1, "momentum": False},
        {"variant": "mal", **BARE},
        {"variant": "mac", "window_size": 4},
        {"variant": "mac", "window_size": 4, "memory_depth": 1, "momentum": False},
        {"variant": "mac", "window_size": 8, **BARE},
    ],
    ids=[
        "mag-mlp-momentum",
        "mag-linear-no-momentum",
        "mag-bare-mlp",
        "mal-mlp-momentum",
        "mal-linear",
        "mal-bare",
        "mac-mlp-momentum",
        "mac-linear",
        "mac-bare",
    ],
)
def test_layer_matches_the_papers_equations(options: dict[str, Any]) -> None:
    check_layer(**options)


@pytest.mark.parametrize("variant", ["mag", "mal", "mac"])
def test_the_output_is_normalised_and_gated_by_a_linear_layer_before_its_projection(variant: str) -> None:
    # §4.4: "normalization and gating with a linear layer before the final output projection". The signature test's
    # oracle applies the gate where the layer has one; here: the default layer has it (MAL also its norm), and the
    # output depends on it.
    assert edifice.config("titans").output_gate
    layer = perturbed_layer(0, variant=variant, window_size=4)
    assert layer.out_gate is not None and (layer.out_norm is not None) == (variant == "mal")
    x = randn(2, 8, 16, seed=1, dtype=torch.float64)
    with torch.no_grad():
        gated = layer(x)
        layer.out_gate = None
        assert not torch.allclose(layer(x), gated, atol=1e-3)


@pytest.mark.parametrize("variant", ["mag", "mal", "mac"])
def test_mutating_the_op_breaks_the_signature_test(variant: str) -> None:
    with mutate_op("memory_gd"), pytest.raises(AssertionError):
        check_layer(variant=variant, window_size=4)


def test_the_surprise_step_lowers_the_associative_loss_of_its_chunk() -> None:
    for options in ({}, {"memory_depth": 1}, {"memory_norm": False}):
        layer = perturbed_layer(2, **options)
        layer.memory_lr = 0.01  # a small step (the oracle tests use large ones): a gradient step must descend
        x = randn(2, 4, 16, seed=3, dtype=torch.float64)  # one chunk
        with torch.no_grad():
            inputs = layer.memory_inputs(x)
            mem = layer.memory
            before_state = mem.expanded(2)
            _, after_state, _ = ops.memory_gd(
                inputs["q"], inputs["k"], inputs["v"], before_state, inputs["lr"],
                momentum=inputs.get("momentum"), **mem.op_kwargs(),  # the surprise step alone: no forgetting
            )  # fmt: skip
            k, v = inputs["k"].transpose(1, 2), inputs["v"].transpose(1, 2)
            before = memory_loss(memory_apply(before_state, k, **mem._spec()), v).sum()
            after = memory_loss(memory_apply(after_state, k, **mem._spec()), v).sum()
        assert after < before, (options, float(before), float(after))


def build(seed: int = 0, **overrides: Any) -> Titans:
    torch.manual_seed(seed)
    model = edifice.build("titans", **{**TINY, **overrides})
    assert isinstance(model, Titans)
    return model


VARIANT_OPTIONS = {"mag": {}, "mal": {"variant": "mal"}, "mac": {"variant": "mac", "window_size": 4}}


@pytest.mark.parametrize("variant", list(VARIANT_OPTIONS))
def test_step_reproduces_forward_with_a_constant_state(variant: str) -> None:
    model = build(4, **VARIANT_OPTIONS[variant]).eval()
    x = randn(2, 13, 6, seed=5)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2, max_len=13)
        shapes = [tuple(t.shape) for _, t in tensor_leaves(state)]
        pieces = []
        for a, b in ((0, 3), (3, 4), (4, 9), (9, 10), (10, 13)):
            y, state = model.step(x[:, a:b], state)
            pieces.append(y)
        assert [tuple(t.shape) for _, t in tensor_leaves(state)] == shapes
    assert_close(torch.cat(pieces, 1), want, SCAN)
    memory = state.layers[0].memory
    read = 13 if variant == "mac" else 15  # MAG and MAL's memories also read the 2 persistent tokens
    assert len(memory.momentum) == len(memory.anchor) == 2 and memory.count.tolist() == [read, read]


@pytest.mark.parametrize("variant", list(VARIANT_OPTIONS))
def test_padding_left_right_and_padded_prefill(variant: str) -> None:
    model = build(6, **VARIANT_OPTIONS[variant]).eval()
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


def test_initialisation() -> None:
    model = edifice.build("titans", d_model=64, n_layers=1, n_heads=2, d_ff=0)
    layer = model.layers[0].mixer
    assert isinstance(layer, TitansMixer)
    for w in (layer.persistent, layer.mem_qkv.weight, layer.attn_qkv.weight, layer.o_proj.weight):
        assert abs(w.std().item() - 0.02) < 0.003
    # The memory is fan-in scaled, N(0, 1/D_in): its keys have unit norm.
    assert layer.memory.W2 is not None
    assert abs(layer.memory.W1.std().item() - 32**-0.5) < 0.01 and abs(layer.memory.W2.std().item() - 128**-0.5) < 0.005
    bias = layer.gate_proj.bias
    assert not bias[:2].any() and torch.equal(bias[2:4], torch.full((2,), -4.0)) and not bias[4:].any()
    assert layer.memory.b1 is None and layer.memory.W1.shape == (2, 32, 128)


def test_config_errors_and_option_names() -> None:
    config = edifice.config("titans", chunk_size=8, num_persistent=3, memory_size=20, hidden_size=32)
    assert (config.mini_batch_size, config.n_persistent, config.memory_hidden, config.d_model) == (8, 3, 20, 32)
    with pytest.raises(edifice.ConfigError, match="memory_depth"):
        edifice.config("titans", memory_depth=3)
    with pytest.raises(edifice.ConfigError, match="variant"):
        edifice.config("titans", variant="mat")
    with pytest.raises(edifice.ConfigError, match="window_size"):
        edifice.config("titans", variant="mac", window_size=20, mini_batch_size=16)
    with pytest.raises(edifice.ConfigError, match="head_dim"):
        edifice.config("titans", variant="mac", d_model=64, n_heads=4, head_dim=8)
    with pytest.raises(edifice.ConfigError, match="window_size"):
        edifice.config("titans", window_size=0)
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("titans", d_model=30, n_heads=4)
    layer = TitansMixer(8, 2, 4, n_persistent=1, window_size=2)
    with pytest.raises(ValueError, match="positions"):
        layer(torch.zeros(1, 1, 8), state=layer.init_state(1))


OTHER_VARIANTS = {"mal": {"variant": "mal"}, "mac": {"variant": "mac", "window_size": 4, "mini_batch_size": 4}}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", list(OTHER_VARIANTS))
def test_the_other_variants_pass_the_contract(variant: str, device: str) -> None:
    # The registry's contract runs the tiny MAG config; MAL and MAC meet it too (compile aside: the same inner loop).
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    checks = [c for c in CHECKS if c not in ("bf16_and_compile", "stochastic")]
    results = check_architecture("titans", checks, overrides=OTHER_VARIANTS[variant], device=device)
    assert {r.status for r in results.values()} <= {"passed", "skipped"}
