"""edifice.ops.memory_gd: the chunked (dual / primal) form against the autograd token loop, fla's TTT, delta rule."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.memory_gd import (
    activation_grad,
    memory_apply,
    memory_gd_naive,
    memory_gd_reference,
    memory_gradient_factors,
    memory_loss,
    memory_readout,
)
from edifice.testing import mutate_op

with warnings.catch_warnings():  # fla warns that it runs on CPU; its naive functions are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.ops.ttt.naive import chunk_ttt_linear_ref

TOL = 1e-9  # fp64 throughout: the chunked form and the loop differ only by rounding
FP32 = 2e-5  # against fla, which runs in fp32
B, H, DK, DH = 2, 2, 4, 6


def make(T: int, *, depth: int = 2, bias: bool = True, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict:
    """Random q, k, v, a memory, learning rates and every gate, ``[B, T, H, ...]``."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=gen, dtype=dtype)

    def u(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(B, T, H, generator=gen, dtype=dtype)

    if depth == 1:
        memory = (r(B, H, DK, DK, scale=0.3), r(B, H, DK, scale=0.1) if bias else None)
    else:
        memory = (
            r(B, H, DK, DH, scale=0.3),
            r(B, H, DH, scale=0.1) if bias else None,
            r(B, H, DH, DK, scale=0.3),
            r(B, H, DK, scale=0.1) if bias else None,
        )
    return {
        "q": r(B, T, H, DK),
        "k": r(B, T, H, DK),
        "v": r(B, T, H, DK),
        "memory": memory,
        "lr": u(0.0, 0.5),
        "retain": u(0.5, 1.0),
        "momentum": u(0.0, 0.9),
        "token_scale": u(0.2, 1.0),
        "delta": u(0.2, 2.0),
        "norm_weight": 1 + r(H, DK, scale=0.1),
        "norm_bias": r(H, DK, scale=0.1),
    }


# name: (options, which gates)
CASES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "ttt-linear": ({"residual": True, "depth": 1}, ("token_scale", "norm")),
    "ttt-mlp-tanh": ({"residual": True, "activation": "gelu_tanh"}, ("token_scale", "norm")),
    "titans": ({"residual": True, "bias": False}, ("retain", "momentum", "norm")),
    "titans-no-ln": ({"activation": "silu"}, ("retain", "momentum")),
    "moneta-lp-lq": ({"loss": "lp", "p": 3.0, "readout": "lq", "readout_q": 4.0, "residual": True}, ("retain", "norm")),
    "yaad-huber": ({"loss": "huber", "residual": True, "activation": "relu"}, ("retain", "delta", "norm")),
    "memora-softmax": ({"readout": "softmax", "readout_scale": 2.0, "depth": 1, "bias": False}, ("retain",)),
    "softmax-momentum": ({"readout": "softmax", "residual": True}, ("retain", "momentum", "norm")),
    "plain-gd": ({"depth": 1}, ()),
}


def call_args(T: int, name: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[dict, dict]:
    """(inputs, keyword options) of case ``name``."""
    options, gates = CASES[name]
    options = dict(options)
    data = make(T, depth=options.pop("depth", 2), bias=options.pop("bias", True), seed=seed, dtype=dtype)
    kwargs = dict(options)
    for gate in ("retain", "momentum", "token_scale", "delta"):
        if gate in gates:
            kwargs[gate] = data[gate]
    if "norm" in gates:
        kwargs.update(norm_weight=data["norm_weight"], norm_bias=data["norm_bias"])
    return data, kwargs


def flat(fn: Callable[..., Any], memory: tuple, kwargs: dict, chunk: int) -> Callable[..., torch.Tensor]:
    """``fn`` as a function of tensors only (q, k, v, lr, memory tensors, float gates), outputs flattened."""
    present = [i for i, w in enumerate(memory) if w is not None]
    gate_names = [n for n in ("retain", "momentum", "token_scale", "delta") if n in kwargs]

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        weights = list(memory)
        for i, w in zip(present, rest[: len(present)], strict=True):
            weights[i] = w
        gates = dict(zip(gate_names, rest[len(present) :], strict=True))
        o, state, mom = fn(q, k, v, tuple(weights), lr, **{**kwargs, **gates}, chunk_size=chunk)
        pieces = [o.flatten(), *(s.flatten() for s in state if s is not None)]
        if mom is not None:
            pieces += [s.flatten() for s in mom if s is not None]
        return torch.cat(pieces)

    return call


@pytest.mark.parametrize(("T", "chunk"), [(1, 4), (7, 3), (9, 4)], ids=["T1", "T7-chunk3", "T9-chunk4"])
@pytest.mark.parametrize("name", list(CASES))
def test_chunked_matches_autograd_loop_with_gradients(name: str, T: int, chunk: int, agree: Any) -> None:
    data, kwargs = call_args(T, name, seed=T)
    memory = data["memory"]
    args = [data["q"], data["k"], data["v"], data["lr"], *(w for w in memory if w is not None)]
    args += [kwargs.pop(n) for n in ("retain", "momentum", "token_scale", "delta") if n in kwargs]
    gate_kwargs = {n: None for n in ("retain", "momentum", "token_scale", "delta") if n in CASES[name][1]}
    ref = flat(memory_gd_reference, memory, {**kwargs, **gate_kwargs}, chunk)
    naive = flat(memory_gd_naive, memory, {**kwargs, **gate_kwargs}, chunk)
    agree(ref, naive, *args, atol=TOL, rtol=TOL)


def test_momentum_state_and_continuation_at_a_chunk_boundary() -> None:
    data, kwargs = call_args(12, "titans", seed=3)
    q, k, v, lr, memory = data["q"], data["k"], data["v"], data["lr"], data["memory"]
    whole, state, mom = ops.memory_gd(q, k, v, memory, lr, chunk_size=4, **kwargs)
    assert mom is not None
    split = {
        key: (value[:, :8] if isinstance(value, torch.Tensor) and value.dim() == 3 else value)
        for key, value in kwargs.items()
    }
    first, mid, mid_mom = ops.memory_gd(q[:, :8], k[:, :8], v[:, :8], memory, lr[:, :8], chunk_size=4, **split)
    rest_kwargs = {
        key: (value[:, 8:] if isinstance(value, torch.Tensor) and value.dim() == 3 else value)
        for key, value in kwargs.items()
    }
    rest, end, end_mom = ops.memory_gd(
        q[:, 8:], k[:, 8:], v[:, 8:], mid, lr[:, 8:], momentum_state=mid_mom, chunk_size=4, **rest_kwargs
    )
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=TOL, rtol=TOL)
    for a, b in zip((*end, *end_mom), (*state, *mom), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)
    # The naive loop agrees on the same continuation (its momentum state argument included).
    _, _, naive_mom = memory_gd_naive(
        q[:, 8:], k[:, 8:], v[:, 8:], mid, lr[:, 8:], momentum_state=mid_mom, chunk_size=4, **rest_kwargs
    )
    assert naive_mom is not None
    torch.testing.assert_close(naive_mom[0], end_mom[0], atol=TOL, rtol=TOL)


def test_chunk_of_one_is_the_delta_rule() -> None:
    # Per-token GD on a linear memory with the l2 loss: W_t = W_{t-1} - θ_t k_t (k_tᵀ W_{t-1} - v_t)ᵀ
    # = (I - θ_t k_t k_tᵀ) W_{t-1} + θ_t k_t v_tᵀ, the delta rule (MIRAS Table 1, DeltaNet), read as o_t = W_tᵀ q_t.
    data = make(10, depth=1, bias=False, seed=4)
    q, k, v, lr, (W, _) = data["q"], data["k"], data["v"], data["lr"], data["memory"]
    o, (W_end, _), _ = ops.memory_gd(q, k, v, (W, None), lr, chunk_size=1)
    o_delta, S = ops.delta_rule(q, k, v, lr, scale=1.0, initial_state=W, chunk_size=4)
    torch.testing.assert_close(o, o_delta, atol=1e-5, rtol=1e-5)  # the delta rule computes in fp32
    torch.testing.assert_close(W_end.float(), S, atol=1e-5, rtol=1e-5)
    # A larger chunk takes every gradient of the chunk at its start: no longer the delta rule.
    o_chunked, _, _ = ops.memory_gd(q, k, v, (W, None), lr, chunk_size=5)
    assert not torch.allclose(o_chunked, o_delta, atol=1e-3)


def test_ttt_linear_matches_fla_naive() -> None:
    # fla's chunk_ttt_linear_ref is TTT-Linear's mini-batch dual form: f(x) = x + LN(x W + b), reconstruction
    # target v - k, per-query step size η_t on the chunk's gradient sum (our token_scale with θ = 1). Its state after
    # the sequence is ours; its output is Z + LN(Z) where the paper's is q + LN(Z), so Z is recovered from it.
    gen = torch.Generator().manual_seed(5)
    T, D, C = 11, 6, 4
    q, k, v = (torch.randn(B, T, H, D, generator=gen, dtype=torch.float32) for _ in range(3))
    W, b = (
        0.3 * torch.randn(B, H, D, D, generator=gen, dtype=torch.float32),
        0.1 * torch.randn(B, H, D, dtype=torch.float32),
    )
    w, beta = 1 + 0.1 * torch.randn(H, D, dtype=torch.float32), 0.1 * torch.randn(H, D, dtype=torch.float32)
    eta = 0.2 * torch.rand(B, T, H, generator=gen, dtype=torch.float32)
    o, _, _ = ops.memory_gd(
        q,
        k,
        v,
        (W, b),
        torch.ones_like(eta),
        token_scale=eta,
        norm_weight=w,
        norm_bias=beta,
        residual=True,
        chunk_size=C,
    )
    o_fla, _, _ = chunk_ttt_linear_ref(
        q,
        k,
        v,
        w,
        beta,
        eta[..., None],
        scale=1.0,
        mini_batch_size=C,
        initial_state=W.clone(),
        initial_state_bias=b[:, :, None].clone(),
        output_final_state=True,
    )
    # fla pads a partial last chunk with zero keys and values, whose gradients still move its final bias: compare
    # the state after a whole number of chunks (the outputs above are unaffected, the padding comes after them).
    _, (W_full, b_full), _ = ops.memory_gd(
        q[:, :8],
        k[:, :8],
        v[:, :8],
        (W, b),
        torch.ones_like(eta[:, :8]),
        token_scale=eta[:, :8],
        norm_weight=w,
        norm_bias=beta,
        residual=True,
        chunk_size=C,
    )
    _, h_full, hb_full = chunk_ttt_linear_ref(
        q[:, :8],
        k[:, :8],
        v[:, :8],
        w,
        beta,
        eta[:, :8, :, None],
        scale=1.0,
        mini_batch_size=C,
        initial_state=W.clone(),
        initial_state_bias=b[:, :, None].clone(),
        output_final_state=True,
    )
    torch.testing.assert_close(W_full, h_full, atol=FP32, rtol=FP32)
    torch.testing.assert_close(b_full, hb_full[:, :, 0], atol=FP32, rtol=FP32)
    ln_z = o - q  # ours: q + LN(Z)
    z = o_fla - ln_z  # fla: Z + LN(Z)
    mu, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close((z - mu) / torch.sqrt(var + 1e-6) * w + beta, ln_z, atol=FP32, rtol=FP32)


def test_a_gradient_step_lowers_the_inner_loss_of_its_chunk() -> None:
    for name in ("ttt-mlp-tanh", "titans", "moneta-lp-lq", "yaad-huber", "memora-softmax"):
        data, kwargs = call_args(8, name, seed=6)
        memory, k, v = data["memory"], data["k"], data["v"]
        kwargs = {**kwargs, "retain": None} if "retain" in kwargs else kwargs
        kwargs.pop("momentum", None)
        spec = {key: kwargs[key] for key in ("activation", "norm_weight", "norm_bias", "residual") if key in kwargs}
        readout = {key: kwargs[key] for key in ("readout", "readout_q", "readout_scale") if key in kwargs}
        loss = {key: kwargs[key] for key in ("loss", "p") if key in kwargs}
        d = None if "delta" not in kwargs else kwargs["delta"].transpose(1, 2)
        lr = torch.full_like(data["lr"], 0.05)
        _, after, _ = ops.memory_gd(data["q"], k, v, memory, lr, chunk_size=8, **kwargs)

        def inner(
            state: tuple,
            readout: dict = readout,
            spec: dict = spec,
            loss: dict = loss,
            d: Any = d,
            k: Any = k,
            v: Any = v,
        ) -> float:
            weights = memory_readout(
                state,
                readout.get("readout", "identity"),
                readout.get("readout_q", 2.0),
                readout.get("readout_scale", 1.0),
            )
            y = memory_apply(weights, k.transpose(1, 2), **spec)
            return float(memory_loss(y, v.transpose(1, 2), delta=d, **loss).sum())

        assert inner(after) < inner(memory), name


def test_mutation_skips_the_update() -> None:
    data, kwargs = call_args(8, "titans", seed=7)
    args = (data["q"], data["k"], data["v"], data["memory"], data["lr"])
    o, _, _ = ops.memory_gd(*args, chunk_size=4, **kwargs)
    with mutate_op("memory_gd"):
        o_wrong, state_wrong, _ = ops.memory_gd(*args, chunk_size=4, **kwargs)
    assert not torch.allclose(o, o_wrong, atol=1e-3)
    # Without the gradient step the memory only decays: A_T = (Π a) A_0.
    decay = data["retain"].prod(1)[..., None, None]
    torch.testing.assert_close(state_wrong[0], decay * data["memory"][0], atol=TOL, rtol=TOL)


def test_helpers_are_what_the_reference_differentiates() -> None:
    x = torch.linspace(-4, 4, 81, dtype=torch.float64, requires_grad=True)
    for act, fn in (
        ("gelu", torch.nn.functional.gelu),
        ("silu", torch.nn.functional.silu),
        ("relu", torch.relu),
        ("gelu_tanh", lambda t: torch.nn.functional.gelu(t, approximate="tanh")),
    ):
        (grad,) = torch.autograd.grad(fn(x).sum(), x)
        torch.testing.assert_close(activation_grad(x.detach(), act), grad, atol=1e-12, rtol=0)
    # Factors reproduce autograd's gradient: ∇_W ℓ = Σ xᵀ g.
    data, _ = call_args(5, "ttt-mlp-tanh", seed=8)
    memory = tuple(None if w is None else w.requires_grad_() for w in data["memory"])
    k, v = data["k"].transpose(1, 2), data["v"].transpose(1, 2)
    spec = {
        "activation": "gelu_tanh",
        "norm_weight": data["norm_weight"],
        "norm_bias": data["norm_bias"],
        "residual": True,
    }
    grads = torch.autograd.grad(memory_loss(memory_apply(memory, k, **spec), v).sum(), list(memory))
    factors = memory_gradient_factors(memory, k, v, **spec)
    for i, (x_l, g_l) in enumerate(factors):
        torch.testing.assert_close(x_l.transpose(-1, -2) @ g_l, grads[2 * i], atol=TOL, rtol=TOL)
        torch.testing.assert_close(g_l.sum(-2), grads[2 * i + 1], atol=TOL, rtol=TOL)
    # Read-outs: ℓ_q normalisation and the column-stochastic softmax.
    A = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    (lq,) = memory_readout([A], "lq", 4.0)
    assert lq is not None
    norm = A.abs().pow(4).sum((-2, -1), keepdim=True).pow(0.25)
    torch.testing.assert_close(lq, A / norm**2)
    sm = memory_readout([A, A[..., 0, :]], "softmax", scale=3.0)
    assert sm[0] is not None and sm[1] is not None
    torch.testing.assert_close(sm[0].sum(-2), torch.full((2, 3, 5), 3.0, dtype=torch.float64))
    torch.testing.assert_close(sm[1].sum(-1), torch.full((2, 3), 3.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs delta"):
        memory_loss(v, v, loss="huber")


def test_low_precision_inputs_keep_an_fp32_state(relative_l2: Any) -> None:
    data, kwargs = call_args(12, "titans", seed=9, dtype=torch.float32)
    args = (data["q"], data["k"], data["v"], data["memory"], data["lr"])
    want, _, _ = ops.memory_gd(*args, chunk_size=4, **kwargs)
    low = [x.bfloat16() for x in args[:3]]
    half, state_half, mom_half = ops.memory_gd(*low, data["memory"], data["lr"].bfloat16(), chunk_size=4, **kwargs)
    assert half.dtype == torch.bfloat16 and state_half[0] is not None and state_half[0].dtype == torch.float32
    assert mom_half is not None and mom_half[0] is not None and mom_half[0].dtype == torch.float32
    assert relative_l2(half, want) <= 2e-2


def _valid() -> dict[str, Any]:
    T = 5
    return {
        "q": torch.zeros(2, T, 2, 4),
        "k": torch.zeros(2, T, 2, 4),
        "v": torch.zeros(2, T, 2, 4),
        "memory": (torch.zeros(2, 2, 4, 6), torch.zeros(2, 2, 6), torch.zeros(2, 2, 6, 4), None),
        "lr": torch.zeros(2, T, 2),
    }


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"q": torch.zeros(2, 5, 2)}, ValueError, r"q must be \[B, T, H, Dk\] \(4-D\)"),
        ({"k": torch.zeros(2, 5, 2, 3)}, ValueError, r"k must be \[B, T, H, Dk\] = \[2, 5, 2, 4\]"),
        ({"v": torch.zeros(2, 4, 2, 4)}, ValueError, r"v must be \[B, T, H, Dv\] with \[B, T, H\] = \[2, 5, 2\]"),
        ({"memory": (torch.zeros(2, 2, 4, 4),)}, ValueError, r"memory must be a tuple \(W1, b1\)"),
        ({"memory": (torch.zeros(2, 2, 3, 4), None)}, ValueError, r"memory\[0\] \(W1\) must be .* = \[2, 2, 4, 4\]"),
        ({"memory": (torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 3))}, ValueError, r"\(b1\) must be .* = \[2, 2, 4\]"),
        ({"memory": (torch.zeros(2, 2, 4, 6), None, torch.zeros(2, 2, 5, 4), None)}, ValueError, r"\(W2\) must be"),
        ({"lr": torch.zeros(2, 5)}, ValueError, r"lr must be \[B, T, H\] \(3-D\)"),
        ({"retain": torch.zeros(2, 4, 2)}, ValueError, r"retain must be \[B, T, H\] = \[2, 5, 2\]"),
        ({"momentum_state": (torch.zeros(2, 2, 4, 4), None)}, ValueError, r"momentum_state needs momentum"),
        (
            {
                "momentum": torch.zeros(2, 5, 2),
                "momentum_state": (torch.zeros(2, 2, 4, 6), None, torch.zeros(2, 2, 6, 4), torch.zeros(2, 2, 4)),
            },
            ValueError,
            r"structure of memory",
        ),
        ({"token_scale": torch.zeros(2, 5, 2), "retain": torch.zeros(2, 5, 2)}, ValueError, r"cannot be combined"),
        ({"activation": "tanh"}, ValueError, r"activation must be one of"),
        ({"loss": "l1"}, ValueError, r"loss must be one of"),
        ({"loss": "huber"}, ValueError, r"needs delta"),
        ({"p": 0.5}, ValueError, r"p must be a number >= 1"),
        ({"readout": "sigmoid"}, ValueError, r"readout must be one of"),
        ({"readout_q": 1.0}, ValueError, r"readout_q must be a number > 1"),
        (
            {"v": torch.zeros(2, 5, 2, 3), "memory": (torch.zeros(2, 2, 4, 3), None), "residual": True},
            ValueError,
            r"residual=True needs Dk == Dv",
        ),
        ({"norm_weight": torch.zeros(4)}, ValueError, r"norm_weight must be \[H, Dv\] = \[2, 4\]"),
        ({"norm_bias": torch.zeros(2, 4)}, ValueError, r"norm_bias needs norm_weight"),
        ({"norm_weight": torch.zeros(2, 4), "norm_bias": torch.zeros(4)}, ValueError, r"norm_bias must be \[H, Dv\]"),
        ({"norm_eps": 0.0}, ValueError, r"norm_eps must be a positive number"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be a positive int"),
        ({"lr": torch.zeros(2, 5, 2, dtype=torch.long)}, TypeError, r"lr must be a floating-point"),
    ],
)
def test_invalid_arguments_raise_clear_errors(change: dict[str, Any], error: type[Exception], match: str) -> None:
    args = {**_valid(), **change}
    with pytest.raises(error, match=match):
        ops.memory_gd(**args)


def test_traces_with_torch_compile_fullgraph() -> None:
    data, kwargs = call_args(6, "titans", seed=10, dtype=torch.float32)
    args = (data["q"], data["k"], data["v"], data["memory"], data["lr"])

    def run(*tensors: Any) -> torch.Tensor:
        return ops.memory_gd(*tensors, chunk_size=4, **kwargs)[0]

    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), run(*args), atol=1e-6, rtol=1e-6)


def test_meta_tensors_give_shapes_and_autocast_keeps_fp32() -> None:
    data, kwargs = call_args(6, "titans", seed=11, dtype=torch.float32)
    args = (data["q"], data["k"], data["v"], data["memory"], data["lr"])
    meta = [x.to("meta") for x in args[:3]]
    o, state, _ = ops.memory_gd(
        *meta, tuple(None if w is None else w.to("meta") for w in args[3]), args[4].to("meta"), chunk_size=4,
        **{key: value.to("meta") if isinstance(value, torch.Tensor) else value for key, value in kwargs.items()},
    )  # fmt: skip
    assert o.shape == (B, 6, H, DK) and o.device.type == "meta" and state[0] is not None
    # Under autocast the memory's arithmetic stays fp32: the result is the fp32 one.
    want, _, _ = ops.memory_gd(*args, chunk_size=4, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _, _ = ops.memory_gd(*args, chunk_size=4, **kwargs)
    torch.testing.assert_close(got, want)
