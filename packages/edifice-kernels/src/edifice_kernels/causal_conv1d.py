# mypy: allow-untyped-defs, allow-incomplete-defs, allow-untyped-decorators, allow-untyped-calls
# (Triton kernels are untyped: @triton.jit functions take tensors of pointers and constexprs.)
"""Causal depthwise conv1d over time, forward and backward, with the ``K-1``-input history of the op.

    y_t[c] = bias[c] + sum_{k<K} weight[c, k] * xp_{t+k}[c],   xp = [initial_state, x] along time

(``edifice.ops.causal_conv1d``: x ``[B, T, C]``, weight ``[C, K]``, bias ``[C]``, initial_state ``[B, C, K-1]``; the
next state is ``causal_conv1d_state``, the last ``K-1`` inputs). A decode step is the same call at ``T = 1``: one
launch, no host synchronisation, so it is CUDA-graph capturable.

Tiling: one program per (batch, block of ``BT`` steps, block of ``BC`` channels); channels are contiguous, so every
load is coalesced along ``C``. The ``K`` taps are unrolled; tap ``k`` of step ``t`` reads ``x_{t-K+1+k}`` or, before
the sequence, the state. Products accumulate in fp32 (the reference multiplies in x's dtype; in bf16 ours is the
more accurate). The backward is the transposed convolution over the same tiles, written for every position of
``xp`` (so the gradient of the initial state comes out of the same kernel):

    dxp_p = sum_k weight[k] dy_{p-k},   dweight[k] = sum_{b,t} dy_t xp_{t+k},   dbias = sum_{b,t} dy_t

The weight and bias gradients are summed per program in registers and reduced across programs by one ``sum``.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from edifice_kernels._common import assert_probe_close, cuda_probe, eligible, next_pow2

__all__ = ["MAX_KERNEL", "causal_conv1d", "probe", "supports"]

#: Largest kernel size unrolled in the kernels; longer convolutions run the reference (or ``long_conv``).
MAX_KERNEL = 64

_BT, _BC = 32, 64


@triton.jit
def _load_xp(X, S, b, p, cols, T, C, KM1, HAS_S: tl.constexpr):
    """``xp[b, p, cols]`` for a vector of positions ``p`` in ``[0, K-1+T)`` (x after the state), fp32, 0 outside."""
    cm = cols[None, :] < C
    t = p - KM1
    x = tl.load(X + (b * T + t[:, None]) * C + cols[None, :], mask=cm & (t[:, None] >= 0) & (t[:, None] < T), other=0.0)
    x = x.to(tl.float32)
    if HAS_S:
        s = tl.load(
            S + (b * C + cols[None, :]) * KM1 + p[:, None], mask=cm & (p[:, None] >= 0) & (t[:, None] < 0), other=0.0
        )
        x += s.to(tl.float32)
    return x


@triton.jit
def _fwd_kernel(
    X, W, BIAS, S, Y, T, C, K: tl.constexpr, HAS_B: tl.constexpr, HAS_S: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    cmask = cols < C
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    if HAS_B:
        acc += tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        w = tl.load(W + cols * K + k, mask=cmask, other=0.0).to(tl.float32)
        acc += w[None, :] * _load_xp(X, S, b, t + k, cols, T, C, K - 1, HAS_S)
    mask = (t[:, None] < T) & cmask[None, :]
    tl.store(Y + (b * T + t[:, None]) * C + cols[None, :], acc.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(
    X, W, S, DY, DX, DS, DW, DB, T, C, K: tl.constexpr, HAS_B: tl.constexpr, HAS_S: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    p = tile * BT + tl.arange(0, BT)  # positions of xp, and (for dweight) output steps
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    cmask = cols < C
    taps = tl.arange(0, BK)
    dxp = tl.zeros([BT, BC], dtype=tl.float32)
    dw = tl.zeros([BK, BC], dtype=tl.float32)
    dy_here = tl.load(DY + (b * T + p[:, None]) * C + cols[None, :], mask=(p[:, None] < T) & cmask[None, :], other=0.0)
    dy_here = dy_here.to(tl.float32)
    for k in tl.static_range(K):
        w = tl.load(W + cols * K + k, mask=cmask, other=0.0).to(tl.float32)
        s = p - k  # the output step that tap k of xp_p feeds
        dy = tl.load(
            DY + (b * T + s[:, None]) * C + cols[None, :],
            mask=(s[:, None] >= 0) & (s[:, None] < T) & cmask[None, :],
            other=0.0,
        )
        dxp += w[None, :] * dy.to(tl.float32)
        # dweight[k] over this tile's output steps t = p: dy_t * xp_{t+k}
        contrib = tl.sum(dy_here * _load_xp(X, S, b, p + k, cols, T, C, K - 1, HAS_S), axis=0)
        dw += tl.where(taps[:, None] == k, contrib[None, :], 0.0)
    # xp_p is x_{p-K+1} for p >= K-1, else the state's column p.
    t = p - (K - 1)
    tl.store(DX + (b * T + t[:, None]) * C + cols[None, :], dxp.to(DX.dtype.element_ty),
             mask=(t[:, None] >= 0) & (t[:, None] < T) & cmask[None, :])  # fmt: skip
    if HAS_S:
        tl.store(DS + (b * C + cols[None, :]) * (K - 1) + p[:, None], dxp.to(DS.dtype.element_ty),
                 mask=(p[:, None] < K - 1) & cmask[None, :])  # fmt: skip
    part = b * tl.num_programs(1) + tile
    tl.store(DW + (part * BK + taps[:, None]) * C + cols[None, :], dw, mask=(taps[:, None] < K) & cmask[None, :])
    if HAS_B:
        tl.store(DB + part * C + cols, tl.sum(dy_here, axis=0), mask=cmask)


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        state: torch.Tensor | None,
        save: bool,
    ) -> torch.Tensor:
        B, T, C = x.shape
        K = weight.shape[1]
        x, weight = x.contiguous(), weight.contiguous()
        bias = None if bias is None else bias.contiguous()
        state = None if state is None else state.contiguous()
        y = torch.empty_like(x)
        grid = (B, triton.cdiv(T, _BT), triton.cdiv(C, _BC))
        if x.numel():
            _fwd_kernel[grid](
                x, weight, bias, state, y, T, C, K=K, HAS_B=bias is not None, HAS_S=state is not None, BT=_BT, BC=_BC
            )
        if save:
            # The reference saves neither the state nor x (it concatenates them), and callers update their state in
            # place right after the call (``state.copy_(causal_conv1d_state(...))``): keep our own copy of the state.
            # The weight is saved as the reference's conv saves it: itself in x's dtype, else a copy.
            state = None if state is None else state.clone()
            weight = weight if weight.dtype == x.dtype else weight.clone()
        ctx.save_for_backward(x, weight, state)
        ctx.has_bias, ctx.bias_dtype = bias is not None, None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, state = ctx.saved_tensors
        B, T, C = x.shape
        K = weight.shape[1]
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        ds = None if state is None else torch.empty_like(state)
        tiles = triton.cdiv(T + K - 1, _BT)
        BK = next_pow2(K)
        dw = torch.empty(B * tiles, BK, C, device=x.device, dtype=torch.float32)
        db = torch.empty(B * tiles, C, device=x.device, dtype=torch.float32) if ctx.has_bias else None
        if x.numel():
            _bwd_kernel[(B, tiles, triton.cdiv(C, _BC))](
                x, weight, state, dy, dx, ds, dw, db, T, C,
                K=K, HAS_B=ctx.has_bias, HAS_S=state is not None, BT=_BT, BC=_BC, BK=BK,
            )  # fmt: skip
            dweight = dw[:, :K].sum(0).t().to(weight.dtype)
            dbias = None if db is None else db.sum(0).to(ctx.bias_dtype)
        else:
            dweight = torch.zeros_like(weight)
            dbias = None if not ctx.has_bias else torch.zeros(C, device=x.device, dtype=ctx.bias_dtype)
        return dx, dweight, dbias, ds, None


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``causal_conv1d`` op's kernel: same arguments and result as ``edifice.ops.causal_conv1d``."""
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, initial_state))
    y: torch.Tensor = _CausalConv1d.apply(x, weight, bias, initial_state, save)
    return y


def supports(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> bool:
    """Shape predicate: CUDA tensors on one device, at most :data:`MAX_KERNEL` taps."""
    return eligible(x, weight, bias, initial_state) and weight.shape[1] <= MAX_KERNEL


def _check(device: torch.device) -> None:
    from edifice.ops.conv import causal_conv1d_reference

    x = torch.randn(2, 5, 3, device=device, requires_grad=True)
    w = torch.randn(3, 4, device=device, requires_grad=True)
    s = torch.randn(2, 3, 3, device=device, requires_grad=True)
    y = causal_conv1d(x, w, None, s)
    assert_probe_close(y, causal_conv1d_reference(x, w, None, s), "causal_conv1d")
    y.sum().backward()


def probe() -> bool:
    """Compile the forward and backward on a tiny sequence and check them against the reference on this card."""
    return cuda_probe(_check)
