# mypy: allow-untyped-defs, allow-incomplete-defs, allow-untyped-decorators, allow-untyped-calls
# (Triton kernels are untyped: @triton.jit functions take tensors of pointers and constexprs.)
"""The linear recurrence ``h_t = a_t h_{t-1} + b_t`` and its log-space form, forward and backward, with h_0.

Two ops share the kernels (``LOG`` switches the algebra):

* ``linear_recurrence(a, b, initial)`` -- the affine maps ``f_t(h) = a_t h + b_t``, composed by
  ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``;
* ``log_scan(log_a, log_b, log_initial)`` -- the same recurrence on logs of positive ``a, b`` (Heinsen 2023, used
  by minGRU/minLSTM): ``log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)``, composed by
  ``(la1, lb1) . (la2, lb2) = (la1 + la2, logaddexp(la2 + lb1, lb2))`` -- never leaving log space, so nothing
  overflows however long the sequence.

Tiling: one program per (batch row, block of ``BS`` state elements) walks time in chunks of ``BT`` steps. A chunk
is one ``[BT, BS]`` tile: an ``associative_scan`` over its rows composes the maps, the state entering the chunk is
applied to every row at once, and the tile's last row is the state carried (in fp32 registers) into the next chunk.
The decode step (``T = 1``) is the same launch with a one-row tile: CUDA-graph capturable.

Backward (no recomputation: the states are the outputs, kept in fp32): with ``G_t = dL/dh_t`` summed over the
future, ``G_t = dy_t + a_{t+1} G_{t+1}`` is the same recurrence run backwards (``associative_scan(reverse=True)``
on the tile, with ``a`` shifted one step), and

    db_t = G_t,   da_t = G_t h_{t-1},   dh_0 = a_1 G_1

in log space the step's weights are ``w_t = exp(log a_t + log h_{t-1} - log h_t)`` (for ``log h_{t-1}``) and
``exp(log b_t - log h_t)`` (for ``log b_t``), both in ``[0, 1]``. Broadcast inputs (one decay per head) are expanded
for the kernel and their gradients summed back.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from edifice_kernels._common import assert_probe_close, cuda_probe, eligible, next_pow2, num_programs

__all__ = ["linear_recurrence", "log_scan", "probe", "probe_log", "supports", "supports_log"]


@triton.jit
def _logaddexp(x, y):
    m = tl.maximum(x, y)
    m = tl.where(m == -float("inf"), 0.0, m)  # both -inf: log(0 + 0) = -inf, not NaN
    return m + tl.log(tl.exp(x - m) + tl.exp(y - m))


@triton.jit
def _affine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _log_affine(a1, b1, a2, b2):
    return a1 + a2, _logaddexp(a2 + b1, b2)


@triton.jit
def _last_row(x, rows, BT: tl.constexpr):
    return tl.sum(tl.where(rows[:, None] == BT - 1, x, 0.0), axis=0)


@triton.jit
def _first_row(x, rows):
    return tl.sum(tl.where(rows[:, None] == 0, x, 0.0), axis=0)


@triton.jit
def _fwd_kernel(
    A, X, H0, H, H32, T, S, LOG: tl.constexpr, HAS_H0: tl.constexpr, WRITE32: tl.constexpr,
    BT: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BS + tl.arange(0, BS)
    cm = cols < S
    rows = tl.arange(0, BT)
    if HAS_H0:
        h = tl.load(H0 + b * S + cols, mask=cm, other=0.0).to(tl.float32)
    elif LOG:
        h = tl.full([BS], -float("inf"), tl.float32)
    else:
        h = tl.zeros([BS], tl.float32)
    for t0 in range(0, T, BT):
        t = t0 + rows
        m = (t[:, None] < T) & cm[None, :]
        off = (b * T + t[:, None]) * S + cols[None, :]
        # Padding rows are identity maps: a = 1, b = 0 (log a = 0, log b = -inf).
        if LOG:
            a = tl.load(A + off, mask=m, other=0.0).to(tl.float32)
            x = tl.load(X + off, mask=m, other=-float("inf")).to(tl.float32)
            a, x = tl.associative_scan((a, x), 0, _log_affine)
            hs = _logaddexp(a + h[None, :], x)
        else:
            a = tl.load(A + off, mask=m, other=1.0).to(tl.float32)
            x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
            a, x = tl.associative_scan((a, x), 0, _affine)
            hs = a * h[None, :] + x
        tl.store(H + off, hs.to(H.dtype.element_ty), mask=m)
        if WRITE32:
            tl.store(H32 + off, hs, mask=m)
        h = _last_row(hs, rows, BT)


@triton.jit
def _bwd_kernel(
    A, X, H0, H32, DY, DA, DX, DH0, T, S, LOG: tl.constexpr, HAS_H0: tl.constexpr,
    BT: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BS + tl.arange(0, BS)
    cm = cols < S
    rows = tl.arange(0, BT)
    NINF: tl.constexpr = -float("inf")
    if HAS_H0:
        h0 = tl.load(H0 + b * S + cols, mask=cm, other=0.0).to(tl.float32)
    elif LOG:
        h0 = tl.full([BS], NINF, tl.float32)
    else:
        h0 = tl.zeros([BS], tl.float32)
    carry = tl.zeros([BS], tl.float32)  # G at the first step of the chunk after this one
    n_chunks = tl.cdiv(T, BT)
    for i in range(n_chunks):
        t = (n_chunks - 1 - i) * BT + rows
        m = (t[:, None] < T) & cm[None, :]
        has_next = (t[:, None] + 1 < T) & cm[None, :]
        has_prev = (t[:, None] >= 1) & m
        off = (b * T + t[:, None]) * S + cols[None, :]
        dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
        a = tl.load(A + off, mask=m, other=0.0).to(tl.float32)
        if LOG:
            h = tl.load(H32 + off, mask=m, other=0.0)
            h_next = tl.load(H32 + off + S, mask=has_next, other=0.0)
            a_next = tl.load(A + off + S, mask=has_next, other=NINF).to(tl.float32)
            w_next = tl.where(h_next == NINF, 0.0, tl.exp(a_next + h - h_next))
        else:
            w_next = tl.load(A + off + S, mask=has_next, other=0.0).to(tl.float32)
        # G_t = dy_t + w_{t+1} G_{t+1}: the affine scan run from the end of the chunk, then the carry applied.
        p, q = tl.associative_scan((w_next, dy), 0, _affine, reverse=True)
        g = q + p * carry[None, :]
        h_prev = tl.load(H32 + off - S, mask=has_prev, other=0.0)
        h_prev = tl.where(t[:, None] == 0, h0[None, :], h_prev)
        if LOG:
            x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
            live = h != NINF
            da = tl.where(live, g * tl.exp(a + h_prev - h), 0.0)
            dx = tl.where(live, g * tl.exp(x - h), 0.0)
        else:
            da = g * h_prev
            dx = g
        tl.store(DA + off, da.to(DA.dtype.element_ty), mask=m)
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=m)
        carry = _first_row(g, rows)
    if HAS_H0:
        a1 = tl.load(A + b * T * S + cols, mask=cm, other=0.0).to(tl.float32)
        if LOG:
            h1 = tl.load(H32 + b * T * S + cols, mask=cm, other=0.0)
            dh0 = tl.where(h1 == NINF, 0.0, carry * tl.exp(a1 + h0 - h1))
        else:
            dh0 = carry * a1
        tl.store(DH0 + b * S + cols, dh0.to(DH0.dtype.element_ty), mask=cm)


def _tiles(device: torch.device, batch: int, T: int, S: int) -> tuple[int, int]:
    """(BT, BS): chunks of up to 32 steps; state blocks narrowed until the grid has about two programs per SM."""
    BT = min(32, next_pow2(T))
    BS = min(128, next_pow2(S))
    target = num_programs(device, per_sm=2)
    while BS > 16 and batch * triton.cdiv(S, BS) < target:
        BS //= 2
    return BT, BS


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None, log: bool, save: bool
    ) -> torch.Tensor:
        out_dtype = torch.promote_types(a.dtype, x.dtype)
        batch, T = x.shape[:2]
        S = math.prod(x.shape[2:])
        a3 = a.expand_as(x).reshape(batch, T, S).contiguous()
        x3 = x.reshape(batch, T, S).contiguous()
        h03 = None if h0 is None else h0.expand(batch, *x.shape[2:]).reshape(batch, S).contiguous()
        # h in x's shape (a view made inside ``forward`` could not be modified in place by the caller), and the
        # fp32 states the backward reads in a buffer of their own: the reference saves neither its output nor
        # ``initial``'s storage in log space, and callers update states in place after the call.
        h = torch.empty(x.shape, device=x.device, dtype=out_dtype)
        h32 = torch.empty(batch, T, S, device=x.device, dtype=torch.float32) if save else h
        BT, BS = _tiles(x.device, batch, T, S)
        if h.numel():
            _fwd_kernel[(batch, triton.cdiv(S, BS))](
                a3, x3, h03, h, h32, T, S, LOG=log, HAS_H0=h03 is not None, WRITE32=save, BT=BT, BS=BS
            )
        if (
            save
            and h0 is not None
            and h03 is not None
            and h03.untyped_storage().data_ptr() == h0.untyped_storage().data_ptr()
        ):
            h03 = h03.clone()
        ctx.save_for_backward(a3, x3 if log else None, h03, h32 if save else None)
        ctx.log, ctx.shapes = log, (a.shape, x.shape, None if h0 is None else h0.shape)
        ctx.dtypes = (a.dtype, x.dtype, None if h0 is None else h0.dtype)
        return h

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a3, x3, h03, h32 = ctx.saved_tensors
        a_shape, x_shape, h0_shape = ctx.shapes
        a_dtype, x_dtype, h0_dtype = ctx.dtypes
        batch, T, S = a3.shape
        dy3 = dy.reshape(batch, T, S).contiguous()
        da = torch.empty(batch, T, S, device=a3.device, dtype=torch.float32)
        dx = torch.empty(batch, T, S, device=a3.device, dtype=x_dtype)
        dh0 = None if h03 is None else torch.empty(batch, S, device=a3.device, dtype=torch.float32)
        BT, BS = _tiles(a3.device, batch, T, S)
        if da.numel():
            _bwd_kernel[(batch, triton.cdiv(S, BS))](
                a3, x3, h03, h32, dy3, da, dx, dh0, T, S, LOG=ctx.log, HAS_H0=h03 is not None, BT=BT, BS=BS
            )
        da_out = da.view(x_shape).sum_to_size(a_shape).to(a_dtype)
        dh0_out = None if dh0 is None else dh0.view(batch, *x_shape[2:]).sum_to_size(h0_shape).to(h0_dtype)
        return da_out, dx.view(x_shape), dh0_out, None, None


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
    """The ``linear_recurrence`` op's kernel: same arguments and result as ``edifice.ops.linear_recurrence``."""
    h: torch.Tensor = _Scan.apply(a, b, initial, False, _needs_grad(a, b, initial))
    return h


def log_scan(log_a: torch.Tensor, log_b: torch.Tensor, log_initial: torch.Tensor | None = None) -> torch.Tensor:
    """The ``log_scan`` op's kernel: same arguments and result as ``edifice.ops.log_scan``."""
    h: torch.Tensor = _Scan.apply(log_a, log_b, log_initial, True, _needs_grad(log_a, log_b, log_initial))
    return h


def _on_cuda(first: Any, *others: Any) -> bool:
    return eligible(first, *others) and first.dim() >= 2


def supports(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None) -> bool:
    """Shape predicate: CUDA tensors on one device (any state shape; broadcast decays are expanded)."""
    return _on_cuda(b, a, initial)


def supports_log(log_a: torch.Tensor, log_b: torch.Tensor, log_initial: torch.Tensor | None = None) -> bool:
    """Shape predicate of the log-space scan: as :func:`supports`."""
    return _on_cuda(log_b, log_a, log_initial)


def _check(device: torch.device, log: bool) -> None:
    from edifice.ops.log_scan import log_scan_reference
    from edifice.ops.recurrence import linear_recurrence_reference

    a = torch.rand(2, 37, 5, device=device)
    a = (a.log() if log else a).requires_grad_()
    b = torch.randn(2, 37, 5, device=device).requires_grad_()
    h0 = torch.randn(2, 5, device=device).requires_grad_()
    fn, ref = (log_scan, log_scan_reference) if log else (linear_recurrence, linear_recurrence_reference)
    dy = torch.randn(2, 37, 5, device=device)
    got = torch.autograd.grad(fn(a, b, h0), (a, b, h0), dy)
    want = torch.autograd.grad(ref(a, b, h0), (a, b, h0), dy)
    for name, g, w in zip(("da", "db", "dh0"), got, want, strict=True):
        assert_probe_close(g, w, f"{'log_scan' if log else 'linear_recurrence'} {name}", tol=1e-3)


def probe() -> bool:
    """Compile forward and backward on a tiny sequence (two chunks) and check the gradients on this card."""
    return cuda_probe(lambda device: _check(device, log=False))


def probe_log() -> bool:
    """The log-space scan's probe."""
    return cuda_probe(lambda device: _check(device, log=True))
