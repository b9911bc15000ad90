# mypy: allow-untyped-defs, allow-incomplete-defs, allow-untyped-decorators, allow-untyped-calls
# (Triton kernels are untyped: @triton.jit functions take tensors of pointers and constexprs.)
"""Mamba-1's selective scan (Gu & Dao 2023, Algorithm 2 with eqs. 2a, 2b, 4), forward and backward, fp32 inside.

    dt = softplus(delta + delta_bias),  h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,  y_t = C_t . h_t + D u_t,
    out_t = y_t silu(z_t)

(``edifice.ops.selective_scan``: u, delta, z ``[B, T, D]``; A ``[D, N]``; B, C ``[B, T, N]`` or ``[B, T, G, N]``;
initial and final state ``[B, D, N]`` fp32.)

Tiling: one program per (batch row, block of ``BD`` channels) holds its ``[BD, N]`` state in fp32 registers and
walks time in chunks of ``BT`` steps. A chunk is a ``[BT, BD, N]`` tile: the decays and inputs of every step are
formed at once, an ``associative_scan`` over the time axis composes the steps, the entering state is applied to all
rows, and the output ``y_t = C_t . h_t`` is a reduction over ``N``. Only ``y`` leaves the chip; under autograd the
forward also writes the state entering each chunk (``[B, T / BT, D, N]`` fp32), nothing per step.

Backward, chunks in reverse, per chunk (recomputation, as ``mamba_ssm`` does, instead of storing ``[B, T, D, N]``):

1. the states ``h_{t-1}`` entering every step are recomputed from the chunk's saved entering state by an exclusive
   scan (the inclusive scan of the rows shifted by one), and ``h_t = a_t h_{t-1} + dt_t B_t u_t`` elementwise;
2. ``G_t = dL/dh_t`` obeys ``G_t = C_t dy_t + a_{t+1} G_{t+1}``: the same scan run backwards
   (``reverse=True``), the carry from the later chunk applied to every row;
3. the gradients are then elementwise products and reductions of the tile:
   ``dC_t = sum_d dy h_t``, ``dB_t = sum_d G dt u``, ``du = sum_n G dt B + D dy``,
   ``d dt = sum_n G (A a h_{t-1} + u B)``, ``dA = sum_{b,t} G a h_{t-1} dt``, ``dD = sum_{b,t} dy u``.

``dB``/``dC`` are summed over channel blocks, ``dA``/``dD`` over the batch, by one ``sum`` each afterwards
(deterministic, no atomics). Groups of B/C (``G > 1``) need a channel block inside one group: ``BD`` divides
``D / G``.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from edifice_kernels._common import assert_probe_close, cuda_probe, eligible, next_pow2, softplus, softplus_grad

__all__ = ["MAX_STATE", "probe", "selective_scan", "supports"]

#: Largest state size ``N`` held in registers; larger states run the reference.
MAX_STATE = 64


@triton.jit
def _affine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _row(x, rows, i):
    """Row ``i`` of a ``[BT, BD, BN]`` tile, as ``[BD, BN]``."""
    return tl.sum(tl.where(rows[:, None, None] == i, x, 0.0), axis=0)


@triton.jit
def _dt(DELTA, BIAS, off, mask, d, dm, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ before and after the softplus, ``[BT, BD]`` fp32."""
    raw = tl.load(DELTA + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(BIAS + d, mask=dm, other=0.0).to(tl.float32)[None, :]
    if SOFTPLUS:
        return raw, softplus(raw)
    return raw, raw


@triton.jit
def _fwd_kernel(
    U, DELTA, A, Bm, Cm, Dv, Z, BIAS, H0, OUT, HT, CKPT, T, DIM, N, CPG, sBb, sBt, sCb, sCt,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    g = (tl.program_id(1) * BD) // CPG  # the block's group of B/C (BD divides D / G)
    n = tl.arange(0, BN)
    rows = tl.arange(0, BT)
    dm, nm = d < DIM, n < N
    dn = dm[:, None] & nm[None, :]
    state = (b * DIM + d[:, None]) * N + n[None, :]
    A2 = tl.load(A + d[:, None] * N + n[None, :], mask=dn, other=0.0).to(tl.float32)
    if HAS_H0:
        h = tl.load(H0 + state, mask=dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BD, BN], tl.float32)
    if HAS_D:
        Dd = tl.load(Dv + d, mask=dm, other=0.0).to(tl.float32)
    n_chunks = tl.cdiv(T, BT)
    for c in range(n_chunks):
        if SAVE:
            tl.store(CKPT + ((b * n_chunks + c) * DIM + d[:, None]) * N + n[None, :], h, mask=dn)
        t = c * BT + rows
        tm = t < T
        m = tm[:, None] & dm[None, :]
        off = (b * T + t[:, None]) * DIM + d[None, :]
        u = tl.load(U + off, mask=m, other=0.0).to(tl.float32)
        _, dt = _dt(DELTA, BIAS, off, m, d, dm, HAS_BIAS, SOFTPLUS)
        mn = tm[:, None] & nm[None, :]
        Bt = tl.load(Bm + b * sBb + t[:, None] * sBt + g * N + n[None, :], mask=mn, other=0.0).to(tl.float32)
        Ct = tl.load(Cm + b * sCb + t[:, None] * sCt + g * N + n[None, :], mask=mn, other=0.0).to(tl.float32)
        # Steps past T are identity maps (a = 1, x = 0), so the last row is h_T.
        a = tl.where(tm[:, None, None], tl.exp(dt[:, :, None] * A2[None, :, :]), 1.0)  # eq. 4
        x = (dt * u)[:, :, None] * Bt[:, None, :]
        a, x = tl.associative_scan((a, x), 0, _affine)
        hs = a * h[None, :, :] + x  # eq. 2a, [BT, BD, BN]
        y = tl.sum(hs * Ct[:, None, :], axis=2)  # eq. 2b
        if HAS_D:
            y += Dd[None, :] * u
        if HAS_Z:
            z = tl.load(Z + off, mask=m, other=0.0).to(tl.float32)
            y = y * z / (1.0 + tl.exp(-z))
        tl.store(OUT + off, y.to(OUT.dtype.element_ty), mask=m)
        h = _row(hs, rows, BT - 1)
    tl.store(HT + state, h, mask=dn)


@triton.jit
def _bwd_kernel(
    U, DELTA, A, Bm, Cm, Dv, Z, BIAS, H0, CKPT, DOUT, DHT,
    DU, DDELTA, DZ, DA, DD, DH0, DB_PART, DC_PART,
    T, DIM, N, CPG, sBb, sBt, sCb, sCt,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    d = blk * BD + tl.arange(0, BD)
    g = (blk * BD) // CPG
    n = tl.arange(0, BN)
    rows = tl.arange(0, BT)
    dm, nm = d < DIM, n < N
    dn = dm[:, None] & nm[None, :]
    state = (b * DIM + d[:, None]) * N + n[None, :]
    A2 = tl.load(A + d[:, None] * N + n[None, :], mask=dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dd = tl.load(Dv + d, mask=dm, other=0.0).to(tl.float32)
    dht = tl.load(DHT + state, mask=dn, other=0.0)
    carry = tl.zeros([BD, BN], tl.float32)  # G at the first step of the later chunk
    dA = tl.zeros([BD, BN], tl.float32)
    dD = tl.zeros([BD], tl.float32)
    n_chunks = tl.cdiv(T, BT)
    part = (blk.to(tl.int64) * tl.num_programs(0) + b) * T  # row of the dB/dC partial sums
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        h0 = tl.load(CKPT + ((b * n_chunks + c) * DIM + d[:, None]) * N + n[None, :], mask=dn, other=0.0)
        t = c * BT + rows
        tm = t < T
        m = tm[:, None] & dm[None, :]
        mn = tm[:, None] & nm[None, :]
        off = (b * T + t[:, None]) * DIM + d[None, :]
        u = tl.load(U + off, mask=m, other=0.0).to(tl.float32)
        raw, dt = _dt(DELTA, BIAS, off, m, d, dm, HAS_BIAS, SOFTPLUS)
        Bt = tl.load(Bm + b * sBb + t[:, None] * sBt + g * N + n[None, :], mask=mn, other=0.0).to(tl.float32)
        Ct = tl.load(Cm + b * sCb + t[:, None] * sCt + g * N + n[None, :], mask=mn, other=0.0).to(tl.float32)
        a = tl.where(tm[:, None, None], tl.exp(dt[:, :, None] * A2[None, :, :]), 1.0)
        ub = u[:, :, None] * Bt[:, None, :]
        # 1. h_{t-1}: the scan of the previous rows of this chunk (row 0: identity, so h_{t-1} = the saved state).
        pm = (rows[:, None] >= 1) & tm[:, None] & dm[None, :]
        u_p = tl.load(U + off - DIM, mask=pm, other=0.0).to(tl.float32)
        _, dt_p = _dt(DELTA, BIAS, off - DIM, pm, d, dm, HAS_BIAS, SOFTPLUS)
        pmn = (rows[:, None] >= 1) & mn
        B_p = tl.load(Bm + b * sBb + (t[:, None] - 1) * sBt + g * N + n[None, :], mask=pmn, other=0.0).to(tl.float32)
        a_p = tl.where(pm[:, :, None], tl.exp(dt_p[:, :, None] * A2[None, :, :]), 1.0)
        a_p, x_p = tl.associative_scan((a_p, (dt_p * u_p)[:, :, None] * B_p[:, None, :]), 0, _affine)
        h_prev = a_p * h0[None, :, :] + x_p
        h = a * h_prev + dt[:, :, None] * ub
        # The gate: out = y silu(z), y = C . h + D u.
        dout = tl.load(DOUT + off, mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            y = tl.sum(h * Ct[:, None, :], axis=2)
            if HAS_D:
                y += Dd[None, :] * u
            z = tl.load(Z + off, mask=m, other=0.0).to(tl.float32)
            sig = 1.0 / (1.0 + tl.exp(-z))
            tl.store(DZ + off, (dout * y * sig * (1.0 + z * (1.0 - sig))).to(DZ.dtype.element_ty), mask=m)
            dy = dout * z * sig
        else:
            dy = dout
        # 2. G_t = C_t dy_t (+ dL/dh_T at the last step) + a_{t+1} G_{t+1}, run from the end of the chunk.
        q = dy[:, :, None] * Ct[:, None, :]
        q += tl.where((t == T - 1)[:, None, None], dht[None, :, :], 0.0)
        nx = (t[:, None] + 1 < T) & dm[None, :]
        _, dt_n = _dt(DELTA, BIAS, off + DIM, nx, d, dm, HAS_BIAS, SOFTPLUS)
        a_n = tl.where(nx[:, :, None], tl.exp(dt_n[:, :, None] * A2[None, :, :]), 0.0)
        p, q = tl.associative_scan((a_n, q), 0, _affine, reverse=True)
        G = q + p * carry[None, :, :]
        carry = _row(G, rows, 0)
        # 3. The gradients of the step's inputs.
        Gdt = G * dt[:, :, None]
        du = tl.sum(Gdt * Bt[:, None, :], axis=2)
        gah = G * a * h_prev
        ddt = tl.sum(gah * A2[None, :, :], axis=2) + tl.sum(G * ub, axis=2)
        if HAS_D:
            du += Dd[None, :] * dy
            dD += tl.sum(dy * u, axis=0)
        if SOFTPLUS:
            ddt = ddt * softplus_grad(raw)
        tl.store(DU + off, du.to(DU.dtype.element_ty), mask=m)
        tl.store(DDELTA + off, ddt, mask=m)
        dA += tl.sum(gah * dt[:, :, None], axis=0)
        pn = (part + t[:, None]) * N + n[None, :]
        tl.store(DB_PART + pn, tl.sum(Gdt * u[:, :, None], axis=1), mask=mn)
        tl.store(DC_PART + pn, tl.sum(dy[:, :, None] * h, axis=1), mask=mn)
    tl.store(DA + state, dA, mask=dn)
    if HAS_D:
        tl.store(DD + b * DIM + d, dD, mask=dm)
    if HAS_H0:
        # dL/dh_0 = a_1 G_1 (carry is G_1 now).
        first = (b * T + rows[:, None] * 0) * DIM + d[None, :]
        _, dt1 = _dt(DELTA, BIAS, first, (rows[:, None] == 0) & dm[None, :], d, dm, HAS_BIAS, SOFTPLUS)
        a1 = tl.exp(_row(tl.broadcast_to(dt1[:, :, None], [BT, BD, BN]), rows, 0) * A2)
        tl.store(DH0 + state, a1 * carry, mask=dn)


def _blocks(dim: int, groups: int, n: int, T: int) -> tuple[int, int, int]:
    """(BT, BD, BN): chunks of 16 steps, blocks of up to 16 channels (``BD * BN <= 256``, so a ``[BT, BD, BN]``
    tile stays in registers) inside one group, the state padded to a power of two."""
    BT = min(16, next_pow2(T))
    BN = next_pow2(n)
    widest = max(1, min(16, 256 // BN))
    if groups == 1:
        return BT, min(widest, next_pow2(dim)), BN
    per_group, block = dim // groups, 1
    while block < widest and per_group % (2 * block) == 0:
        block *= 2
    return BT, block, BN


def _bc_strides(t: torch.Tensor) -> tuple[int, int]:
    """(batch, time) strides of a contiguous B or C, ``[B, T, N]`` or ``[B, T, G, N]``."""
    return t.stride(0), t.stride(1)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        initial_state: torch.Tensor | None,
        softplus: bool,
        save: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, T, dim = u.shape
        N = A.shape[1]
        groups = 1 if B.dim() == 3 else B.shape[2]
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        D, z, delta_bias, initial_state = (
            None if t is None else t.contiguous() for t in (D, z, delta_bias, initial_state)
        )
        BT, BD, BN = _blocks(dim, groups, N, T)
        n_chunks = triton.cdiv(T, BT)
        out = torch.empty_like(u)
        h_T = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32)
        ckpt = torch.empty(batch, n_chunks, dim, N, device=u.device, dtype=torch.float32) if save else None
        grid = (batch, triton.cdiv(dim, BD))
        if T == 0:
            h_T.copy_(initial_state if initial_state is not None else torch.zeros_like(h_T))
        else:
            _fwd_kernel[grid](
                u, delta, A, B, C, D, z, delta_bias, initial_state, out, h_T, ckpt, T, dim, N, dim // groups,
                *_bc_strides(B), *_bc_strides(C),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
                HAS_H0=initial_state is not None, SAVE=save, BT=BT, BD=BD, BN=BN, num_warps=4,
            )  # fmt: skip
        if save:
            # Small tensors that callers update in place (the state they carry, a bias under a fused optimizer) are
            # saved as our own copies: the reference saves softplus(delta + delta_bias), never delta_bias itself.
            delta_bias = None if delta_bias is None else delta_bias.clone()
            initial_state = None if initial_state is None else initial_state.clone()
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt)
        ctx.softplus, ctx.groups = softplus, groups
        ctx.mark_non_differentiable(h_T) if not save else None
        return out, h_T

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor, dh_T: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt = ctx.saved_tensors
        batch, T, dim = u.shape
        N = A.shape[1]
        groups = ctx.groups
        BT, BD, BN = _blocks(dim, groups, N, T)
        blocks = triton.cdiv(dim, BD)
        f32: dict[str, Any] = {"device": u.device, "dtype": torch.float32}
        dout = dout.contiguous()
        dh_T = torch.zeros(batch, dim, N, **f32) if dh_T is None else dh_T.contiguous().float()
        du = torch.empty_like(u)
        ddelta = torch.empty(batch, T, dim, **f32)
        dz = None if z is None else torch.empty_like(z)
        dA = torch.empty(batch, dim, N, **f32)
        dD = None if D is None else torch.empty(batch, dim, **f32)
        dh0 = None if initial_state is None else torch.empty(batch, dim, N, **f32)
        dB_part = torch.empty(blocks, batch, T, N, **f32)
        dC_part = torch.empty(blocks, batch, T, N, **f32)
        if T:
            _bwd_kernel[(batch, blocks)](
                u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt, dout, dh_T,
                du, ddelta, dz, dA, dD, dh0, dB_part, dC_part,
                T, dim, N, dim // groups, *_bc_strides(B), *_bc_strides(C),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.softplus,
                HAS_H0=initial_state is not None, BT=BT, BD=BD, BN=BN, num_warps=8,
            )  # fmt: skip
        else:
            dA.zero_()
            if dD is not None:
                dD.zero_()
            if dh0 is not None:
                dh0.copy_(dh_T)
            dB_part.zero_()
            dC_part.zero_()

        def per_group(part: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            # Channel blocks of one group are consecutive: sum them, then lay the groups out as B/C are.
            total = part.view(groups, blocks // groups, batch, T, N).sum(1)  # (G, B, T, N)
            return (total[0] if like.dim() == 3 else total.permute(1, 2, 0, 3)).to(like.dtype)

        dbias = None if delta_bias is None else ddelta.sum((0, 1)).to(delta_bias.dtype)
        return (
            du,
            ddelta.to(delta.dtype),
            dA.sum(0).to(A.dtype),
            per_group(dB_part, B),
            per_group(dC_part, C),
            None if dD is None or D is None else dD.sum(0).to(D.dtype),
            dz,
            dbias,
            None if dh0 is None or initial_state is None else dh0.to(initial_state.dtype),
            None,
            None,
        )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    algorithm: str = "chunked",
) -> Any:
    """The ``selective_scan`` op's kernel: same arguments and result as ``edifice.ops.selective_scan``
    (``algorithm`` names one of the reference's scans and is ignored here)."""
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    out, h_T = _SelectiveScan.apply(*inputs, bool(delta_softplus), save)
    return (out, h_T) if return_final_state else out


def supports(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    algorithm: str = "chunked",
) -> bool:
    """Shape predicate: CUDA tensors on one device and a state of at most :data:`MAX_STATE`."""
    return eligible(u, delta, A, B, C, D, z, delta_bias, initial_state) and A.shape[1] <= MAX_STATE


def _check(device: torch.device) -> None:
    from edifice.ops.selective_scan import selective_scan_reference

    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device).requires_grad_()

    u, delta, z = rand(2, 19, 6), rand(2, 19, 6), rand(2, 19, 6)
    A = (-torch.rand(6, 4, generator=gen)).to(device).requires_grad_()
    B, C, D, h0 = rand(2, 19, 4), rand(2, 19, 4), rand(6), rand(2, 6, 4)
    inputs = (u, delta, A, B, C, D, z)
    dy = torch.randn(2, 19, 6, generator=gen).to(device)
    got = torch.autograd.grad(selective_scan(*inputs, initial_state=h0), (*inputs, h0), dy)
    want = torch.autograd.grad(selective_scan_reference(*inputs, initial_state=h0), (*inputs, h0), dy)
    for name, g, w in zip(("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dh0"), got, want, strict=True):
        assert_probe_close(g, w, f"selective_scan {name}", tol=1e-3)


def probe() -> bool:
    """Compile forward and backward on a tiny scan (two chunks) and check every gradient on this card."""
    return cuda_probe(_check)
