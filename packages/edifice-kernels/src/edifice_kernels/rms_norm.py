# mypy: allow-untyped-defs, allow-incomplete-defs, allow-untyped-decorators, allow-untyped-calls
# (Triton kernels are untyped: @triton.jit functions take tensors of pointers and constexprs.)
"""Fused RMSNorm and gated RMSNorm: one pass over each row forward, one backward (Zhang & Sennrich 2019, eq. 4).

    y = x / sqrt(mean(x^2) + eps) * weight                      (rms_norm)
    y = g / sqrt(mean_group(g^2) + eps) * weight, g = x * silu(z)  (gated_rms_norm, Mamba-2's gate-before-norm)

Layout: ``x`` (and ``z``) ``[..., D]`` flattened to ``M`` rows; the gated form normalises each of ``D / group_size``
groups of a row on its own. The forward runs one program per (row, group), with the whole group in registers
(``D <= MAX_WIDTH``), statistics in fp32, and keeps ``1 / rms`` (fp32, ``[M, groups]``) for the backward:

    x̂ = g / rms,  dg = (dy w - x̂ mean(dy w x̂)) / rms,  dw = sum_rows dy x̂,
    dx = dg silu(z),  dz = dg x sigmoid(z) (1 + z (1 - sigmoid(z)))

The backward runs a few persistent programs per SM, each striding over rows and summing its share of ``dw`` in
registers; the per-program partial sums are added by one ``sum`` afterwards (deterministic, no atomics).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from edifice_kernels._common import assert_probe_close, cuda_probe, eligible, next_pow2, num_programs

__all__ = ["MAX_WIDTH", "gated_rms_norm", "probe", "probe_gated", "rms_norm", "supports", "supports_gated"]

#: Widest group the kernels hold in registers; wider rows run the reference.
MAX_WIDTH = 16384


@triton.jit
def _fwd_kernel(X, Z, W, Y, RSTD, D, GS, G, eps, HAS_Z: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    cols = tl.arange(0, BLOCK)
    mask = cols < GS
    offs = row * D + g * GS + cols
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
        x = x * z / (1.0 + tl.exp(-z))  # x * silu(z)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / GS + eps)
    y = x * rstd
    if HAS_W:
        y = y * tl.load(W + g * GS + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row * G + g, rstd)


@triton.jit
def _bwd_kernel(
    X, Z, W, DY, RSTD, DX, DZ, DW, M, D, GS, G, rows_per_program,
    HAS_Z: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    g = tl.program_id(1)
    cols = tl.arange(0, BLOCK)
    mask = cols < GS
    if HAS_W:
        w = tl.load(W + g * GS + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(rows_per_program):
        row = pid.to(tl.int64) * rows_per_program + i
        # (A vector comparison: the CPU interpreter mis-types a scalar bool and-ed into a vector mask.)
        m = mask & ((cols * 0 + row) < M)
        offs = row * D + g * GS + cols
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row * G + g, mask=row < M, other=0.0)
        xg = x
        if HAS_Z:
            z = tl.load(Z + offs, mask=m, other=0.0).to(tl.float32)
            sig = 1.0 / (1.0 + tl.exp(-z))
            xg = x * z * sig
        xhat = xg * rstd
        wdy = dy
        if HAS_W:
            wdy = dy * w
            dw += dy * xhat
        dxg = (wdy - xhat * (tl.sum(xhat * wdy, axis=0) / GS)) * rstd
        if HAS_Z:
            tl.store(DX + offs, (dxg * z * sig).to(DX.dtype.element_ty), mask=m)
            tl.store(DZ + offs, (dxg * x * sig * (1.0 + z * (1.0 - sig))).to(DZ.dtype.element_ty), mask=m)
        else:
            tl.store(DX + offs, dxg.to(DX.dtype.element_ty), mask=m)
    if HAS_W:
        tl.store(DW + pid.to(tl.int64) * D + g * GS + cols, dw, mask=mask)


def _warps(block: int) -> int:
    return 8 if block >= 4096 else 4 if block >= 1024 else 2


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor | None, eps: float, groups: int
    ) -> torch.Tensor:
        D = x.shape[-1]
        x2 = x.reshape(-1, D).contiguous()
        z2 = None if z is None else z.reshape(-1, D).contiguous()
        w = None if weight is None else weight.contiguous()
        M, GS = x2.shape[0], D // groups
        # Allocated in x's shape, not returned as a view of a flat buffer: a caller may modify a Function's output
        # in place (as it may the reference's), which autograd forbids for a view made inside ``forward``.
        y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        rstd = torch.empty(M, groups, device=x.device, dtype=torch.float32)
        block = next_pow2(GS)
        if M > 0:
            _fwd_kernel[(M, groups)](
                x2, z2, w, y, rstd, D, GS, groups, eps,
                HAS_Z=z is not None, HAS_W=w is not None, BLOCK=block, num_warps=_warps(block),
            )  # fmt: skip
        # The reference saves the weight itself only in fp32 (``weight.float()``), else a copy; so do we (it is small).
        ctx.save_for_backward(x2, z2, w if w is None or w.dtype == torch.float32 else w.clone(), rstd)
        ctx.groups, ctx.shape = groups, x.shape
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, z2, w, rstd = ctx.saved_tensors
        groups = ctx.groups
        M, D = x2.shape
        GS = D // groups
        dy2 = dy.reshape(-1, D).contiguous()
        dx = torch.empty_like(x2)
        dz = None if z2 is None else torch.empty_like(z2)
        programs = max(1, min(M, num_programs(x2.device)))
        rows = -(-M // programs) if M else 0
        programs = -(-M // rows) if M else 1
        dw_part = None if w is None else torch.zeros(programs, D, device=x2.device, dtype=torch.float32)
        block = next_pow2(GS)
        if M > 0:
            _bwd_kernel[(programs, groups)](
                x2, z2, w, dy2, rstd, dx, dz, dw_part, M, D, GS, groups, rows,
                HAS_Z=z2 is not None, HAS_W=w is not None, BLOCK=block, num_warps=_warps(block),
            )  # fmt: skip
        dw = None if dw_part is None or w is None else dw_part.sum(0).to(w.dtype)
        return dx.view(ctx.shape), None if dz is None else dz.view(ctx.shape), dw, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """The ``rms_norm`` op's kernel: same arguments and result as ``edifice.ops.rms_norm``."""
    y: torch.Tensor = _RMSNorm.apply(x, None, weight, float(eps), 1)
    return y


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
) -> torch.Tensor:
    """``RMSNorm(x * silu(z)) * weight`` over groups of ``group_size`` features (all of ``D`` when None); fp32 inside,
    x's dtype out."""
    D = x.shape[-1]
    groups = 1 if group_size is None else D // group_size
    y: torch.Tensor = _RMSNorm.apply(x, z, weight, float(eps), groups)
    return y


def _fits(x: Any, *others: Any, width: int) -> bool:
    return eligible(x, *others) and x.dim() >= 1 and 0 < width <= MAX_WIDTH


def supports(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> bool:
    """Shape predicate: a CUDA row of at most :data:`MAX_WIDTH` features, the weight on the same device."""
    return _fits(x, weight, width=x.shape[-1] if isinstance(x, torch.Tensor) and x.dim() else 0)


def supports_gated(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
) -> bool:
    """Shape predicate of the gated form: groups of at most :data:`MAX_WIDTH` features, z shaped like x."""
    if not isinstance(x, torch.Tensor) or not isinstance(z, torch.Tensor) or z.shape != x.shape or not x.dim():
        return False
    width = x.shape[-1] if group_size is None else group_size
    return _fits(x, z, weight, width=width)


def _check(device: torch.device) -> None:
    from edifice.ops.norm import rms_norm_reference

    x = torch.randn(3, 40, device=device, requires_grad=True)
    w = torch.randn(40, device=device, requires_grad=True)
    y = rms_norm(x, w)
    assert_probe_close(y, rms_norm_reference(x, w), "rms_norm")
    y.sum().backward()


def probe() -> bool:
    """Compile the forward and backward on a tiny row and check them against the reference on this card."""
    return cuda_probe(_check)


def _check_gated(device: torch.device) -> None:
    x = torch.randn(3, 40, device=device, requires_grad=True)
    z = torch.randn(3, 40, device=device, requires_grad=True)
    y = gated_rms_norm(x, z, None, 1e-6, 20)
    g = (x * torch.nn.functional.silu(z)).view(3, 2, 20)
    assert_probe_close(y, (g * torch.rsqrt(g.square().mean(-1, keepdim=True) + 1e-6)).view(3, 40), "gated_rms_norm")
    y.sum().backward()


def probe_gated() -> bool:
    """The gated form's probe: a tiny two-group call against its definition."""
    return cuda_probe(_check_gated)
