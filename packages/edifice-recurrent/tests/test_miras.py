"""miras: Moneta, Yaad and Memora against fp64 oracles of their update rules, the inner step, decoding, padding, config.

The oracle recomputes a layer from its weights with independent code (Behrouz et al. 2025, "It's All Connected"): the
q, k, v projections, padded ``F.conv1d``, SiLU and ℓ2 norm; then the memory ``M(x) = x + LN(W2 GELU(W1 x))`` one token
at a time, each gradient from ``torch.autograd.grad`` at the memory of the chunk's start (§5.4), with the model's
update rule written as the paper states it:

* Moneta: ``A_t = α_t A_{t-1} - η_t ∇ℓ_p``, ``W_t = A_t / ‖A_t‖_q^{q-2}``, ``ℓ_p = Σ (e² + ε)^{p/2}``;
* Yaad: ``W_t = α_t W_{t-1} - η_t ∇ℓ₂`` if ``‖e‖ <= δ_t`` else ``- η_t δ_t ∇ℓ₁``;
* Memora: ``W_t = c · Softmax(α_t log W_{t-1} - η_t ∇‖e‖²)`` -- with the logarithm, not the op's logit-space form.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice import ops
from edifice.ops.memory_gd import memory_apply, memory_loss, memory_readout
from edifice.outputs import tensor_leaves
from edifice.testing import mutate_op, signature
from edifice.testing.tol import SCAN, assert_close
from edifice_recurrent.miras import LR_BIAS, RETAIN_BIAS, Miras, MirasLayer

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection

TINY: dict[str, Any] = {"d_model": 16, "n_layers": 2, "n_heads": 2, "memory_size": 16, "mini_batch_size": 4, "d_in": 6}
FP64 = {"atol": 1e-6, "rtol": 1e-5}  # fp64 throughout, except the output RMSNorm (fp32 statistics by design)
VARIANTS = ("moneta", "yaad", "memora")


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def perturbed_layer(seed: int, variant: str, **options: Any) -> MirasLayer:
    """A layer in fp64 whose every parameter was moved off its initial value."""
    torch.manual_seed(seed)
    layer = MirasLayer(16, 2, 8, variant=variant, memory_hidden=12, mini_batch_size=4, **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return layer


def causal_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    K = weight.shape[1]
    return F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), weight[:, None], groups=x.shape[-1]).transpose(1, 2)


def memory_model(W: list[torch.Tensor], x: torch.Tensor, ln: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``M(x) = x + LN(W2 GELU(W1 x))`` (row-vector convention: ``x W1``), or ``x + LN(x W1)`` for one layer."""
    z = x @ W[0]
    if len(W) == 2:
        z = F.gelu(z) @ W[1]
    z = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-6)
    return x + z * ln[0] + ln[1]


def lq_normalise(A: torch.Tensor, q: float) -> torch.Tensor:
    """Moneta's ``A / ‖A‖_q^{q-2}``, the norm over the matrix's entries."""
    return A / (A.abs() ** q).sum() ** ((q - 2) / q)


def oracle(layer: MirasLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output on ``x [B, T, d]`` from the paper's update rules, token by token, in fp64."""
    B, T, _ = x.shape
    H, D, C, variant = layer.n_heads, layer.head_dim, layer.memory.chunk_size, layer.variant
    opts = layer.memory.op_options
    qkv = (x @ layer.qkv.weight.T).chunk(3, -1)
    q, k, v = (
        F.silu(causal_conv(f, c)).reshape(B, T, H, D)
        for f, c in zip(qkv, layer.convs.conv.weight.chunk(3), strict=True)
    )
    q, k = (t / torch.sqrt(t.square().sum(-1, keepdim=True) + 1e-6) for t in (q, k))
    g = (x @ layer.gate_proj.weight.T + layer.gate_proj.bias).split(H, -1)
    eta, alpha = layer.memory_lr * torch.sigmoid(g[0]) / D, torch.sigmoid(g[1])
    delta = F.softplus(g[3]) if variant == "yaad" else None
    mem = layer.memory
    assert mem.norm_weight is not None and mem.norm_bias is not None
    out = torch.zeros(B, T, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            ln = (mem.norm_weight[h], mem.norm_bias[h])
            state = [p[h].detach() for p in mem.initial() if p is not None]  # A (Moneta, Memora) or W (Yaad)
            if variant == "moneta":
                read = [lq_normalise(a, opts["readout_q"]) for a in state]
            elif variant == "memora":
                read = [opts["readout_scale"] * torch.softmax(a, 0) for a in state]  # W_0 = c·softmax(A_0)
            else:
                read = list(state)
            anchor = read
            for t in range(T):
                if t % C == 0:
                    anchor = read  # §5.4: the chunk's gradients are taken at its first memory
                with torch.enable_grad():
                    leaves = [w.clone().requires_grad_(True) for w in anchor]
                    e = memory_model(leaves, k[b, t, h], ln) - v[b, t, h]
                    if variant == "moneta":
                        loss = ((e**2 + 1e-6) ** (opts["p"] / 2)).sum()  # ℓ_p, |x| smoothed as sqrt(x² + ε)
                    elif variant == "yaad":
                        assert delta is not None
                        d = delta[b, t, h]
                        loss = 0.5 * e.square().sum() if e.norm() <= d else d * e.abs().sum()  # Huber switch
                    else:
                        loss = e.square().sum()  # ℓ₂ = ‖e‖²
                    grads = torch.autograd.grad(loss, leaves)
                a_t, n_t = alpha[b, t, h], eta[b, t, h]
                if variant == "moneta":  # A_t = α A_{t-1} - η ∇ℓ_p;  W_t = A_t / ‖A_t‖_q^{q-2}
                    state = [a_t * a - n_t * gr for a, gr in zip(state, grads, strict=True)]
                    read = [lq_normalise(a, opts["readout_q"]) for a in state]
                elif variant == "yaad":  # W_t = α W_{t-1} - η ∇ℓ
                    state = [a_t * w - n_t * gr for w, gr in zip(state, grads, strict=True)]
                    read = state
                else:  # W_t = c · Softmax(α log W_{t-1} - η ∇ℓ₂), per column
                    read = [
                        opts["readout_scale"] * torch.softmax(a_t * torch.log(w) - n_t * gr, 0)
                        for w, gr in zip(read, grads, strict=True)
                    ]
                out[b, t, h] = memory_model(read, q[b, t, h], ln)
    y = out / torch.sqrt(out.square().mean(-1, keepdim=True) + 1e-6) * layer.out_norm.weight  # per-head RMSNorm
    y = y.reshape(B, T, H * D) * torch.sigmoid(x @ layer.g_proj.weight.T)
    return y @ layer.o_proj.weight.T


def check_layer(variant: str, **options: Any) -> None:
    layer = perturbed_layer(0, variant, **options)
    x = randn(2, 11, 16, seed=1, dtype=torch.float64)
    with torch.no_grad():
        want = oracle(layer, x)
        torch.testing.assert_close(layer(x), want, **FP64)  # the chunked form
        state = layer.init_state(2, dtype=torch.float64)
        pieces = [layer(x[:, :5], state=state)] + [layer(x[:, t : t + 1], state=state) for t in range(5, 11)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, **FP64)  # the recurrent form


@signature("miras")
@pytest.mark.parametrize(
    ("variant", "options"),
    [
        ("moneta", {}),
        ("moneta", {"p_norm": 1.5, "q_norm": 3.0, "memory_depth": 1}),
        ("yaad", {}),
        ("memora", {}),
        ("memora", {"kl_scale": 2.0}),
    ],
    ids=["moneta", "moneta-p1.5-q3-linear", "yaad", "memora", "memora-c2"],
)
def test_layer_matches_the_papers_update_rule(variant: str, options: dict[str, Any]) -> None:
    check_layer(variant, **options)


def test_mutating_the_op_breaks_the_signature_test() -> None:
    for variant in VARIANTS:
        with mutate_op("memory_gd"), pytest.raises(AssertionError):
            check_layer(variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_inner_step_lowers_the_attentional_bias_of_its_chunk(variant: str) -> None:
    layer = perturbed_layer(2, variant)
    x = randn(2, 4, 16, seed=3, dtype=torch.float64)  # one chunk
    mem = layer.memory
    opts = mem.op_options
    readout = (opts.get("readout", "identity"), opts.get("readout_q", 2.0), opts.get("readout_scale", 1.0))
    with torch.no_grad():
        inputs = layer.memory_inputs(x)
        before = mem.expanded(2)
        _, after, _ = ops.memory_gd(
            inputs["q"], inputs["k"], inputs["v"], before, inputs["lr"], delta=inputs.get("delta"), **mem.op_kwargs()
        )  # the gradient step alone (no retention gate)
        k, v = inputs["k"].transpose(1, 2), inputs["v"].transpose(1, 2)
        d = None if "delta" not in inputs else inputs["delta"].transpose(1, 2)
        loss = {key: opts[key] for key in ("loss", "p") if key in opts}

        def bias(state: tuple) -> float:
            y = memory_apply(memory_readout(state, *readout), k, **mem._spec())
            return float(memory_loss(y, v, delta=d, **loss).sum())

        assert bias(after) < bias(before)


def build(seed: int = 0, **overrides: Any) -> Miras:
    torch.manual_seed(seed)
    model = edifice.build("miras", **{**TINY, **overrides})
    assert isinstance(model, Miras)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_step_reproduces_forward_with_a_constant_state(variant: str) -> None:
    model = build(4, variant=variant).eval()
    x = randn(2, 13, 6, seed=5)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2)
        shapes = [tuple(t.shape) for _, t in tensor_leaves(state)]
        pieces = []
        for a, b in ((0, 3), (3, 4), (4, 9), (9, 10), (10, 13)):
            y, state = model.step(x[:, a:b], state)
            pieces.append(y)
        assert [tuple(t.shape) for _, t in tensor_leaves(state)] == shapes
    assert_close(torch.cat(pieces, 1), want, SCAN)


def test_padding_left_right_and_padded_prefill() -> None:
    model = build(6, variant="memora").eval()
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


def test_initialisation_of_each_variant() -> None:
    for variant in VARIANTS:
        layer = MirasLayer(64, 2, 32, variant=variant)
        W1, W2 = layer.memory.W1, layer.memory.W2
        assert W2 is not None and W1.shape == (2, 32, 128) and layer.memory.b1 is None  # expansion 4, no biases
        bias = layer.gate_proj.bias
        assert torch.equal(bias[:2], torch.full((2,), LR_BIAS)) and LR_BIAS == -3.0
        assert torch.equal(bias[2:4], torch.full((2,), RETAIN_BIAS[variant]))
        if variant == "moneta":  # unit ℓ_q norm per head: the read-out starts as the identity
            norms = W1.abs().pow(4.0).sum((-2, -1)).pow(0.25)
            torch.testing.assert_close(norms, torch.ones(2))
            (read,) = memory_readout([W1], "lq", 4.0)
            assert read is not None
            torch.testing.assert_close(read, W1)
        elif variant == "memora":  # logits N(0, 1): a random column-stochastic memory
            assert abs(W1.std().item() - 1.0) < 0.05
        else:
            assert abs(W1.std().item() - 32**-0.5) < 0.01
            torch.testing.assert_close(bias[6:], torch.full((2,), 0.5413), atol=1e-4, rtol=0)  # softplus⁻¹(1)


def test_config_errors_and_option_names() -> None:
    config = edifice.config("miras", variant="memora", chunk_size=8, p=2.5, q=3.0, memory_size=20, hidden_size=32)
    assert (config.mini_batch_size, config.p_norm, config.q_norm, config.memory_hidden, config.d_model) == (
        8,
        2.5,
        3.0,
        20,
        32,
    )
    with pytest.raises(edifice.ConfigError, match="variant"):
        edifice.config("miras", variant="titans")
    with pytest.raises(edifice.ConfigError, match="p_norm"):
        edifice.config("miras", p_norm=0.5)
    with pytest.raises(edifice.ConfigError, match="q_norm"):
        edifice.config("miras", q_norm=1.0)
    with pytest.raises(ValueError, match="variant must be one of"):
        MirasLayer(8, 2, 4, variant="atlas")


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_untrained_inner_optimisation_is_stable_over_long_sequences(variant: str) -> None:
    """The gate-bias init keeps the backward through 1024 inner steps bounded (module doc); σ(0) / σ(4) does not."""

    def first_input_gradient(lr_bias: float, retain_bias: float) -> float:
        torch.manual_seed(0)
        model = edifice.build("miras", **{**edifice.get_spec("miras").tiny, "variant": variant})
        with torch.no_grad():
            for layer in model.layers:
                layer.mixer.gate_proj.bias[:2] = lr_bias
                layer.mixer.gate_proj.bias[2:4] = retain_bias
        x = torch.randn(1, 1024, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        model(x).square().mean().backward()
        assert x.grad is not None
        return float(x.grad[0, 0].norm())

    assert first_input_gradient(LR_BIAS, RETAIN_BIAS[variant]) < 1e-2
    if variant != "memora":  # the previous init: the inner optimisation of Moneta and Yaad was chaotic
        assert not first_input_gradient(0.0, 4.0) < 1.0  # large or NaN
