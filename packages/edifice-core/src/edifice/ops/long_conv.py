"""Causal long convolution via FFT, the convolution form of linear time-invariant SSMs (S4, S4D, H3, Hyena).

A channel-wise causal convolution whose kernel is as long as the sequence::

    y_t[d] = sum_{j=0}^{min(t, L-1)} k[d, j] * u_{t-j}[d]  +  skip[d] * u_t[d]

(S4, Gu et al. 2022, arXiv:2111.00396, eq. (4)-(5): ``y = K * u + D u``). The direct sum costs ``O(T L)`` per channel;
the reference zero-pads both signals to ``n >= T + L - 1`` and multiplies their real FFTs (the convolution theorem),
``O(n log n)``, so the circular wrap-around never reaches the first ``T`` outputs. Kernel taps beyond ``T - 1`` can
never touch an output and are dropped first. The FFTs run in fp32 (fp64 inputs stay fp64); the result has ``u``'s
dtype.

Legend: ``B`` batch, ``T`` time, ``D`` channels, ``L`` kernel length (any length; taps past ``T - 1`` are unused).
"""

from __future__ import annotations

import torch

from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op

__all__ = ["check_long_conv", "long_conv", "long_conv_naive", "long_conv_reference"]

_OP = "long_conv"


def check_long_conv(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    expect_rank(_OP, "u", u, 3, "[B, T, D]")
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"{_OP}: k must be a tensor [D, L] or [B, D, L], got {type(k).__name__}")
    expect_floating(_OP, u=u, k=k, skip=skip)
    B, _, D = u.shape
    if k.dim() not in (2, 3) or k.shape[-2] != D or k.shape[-1] < 1 or (k.dim() == 3 and k.shape[0] != B):
        raise ValueError(f"{_OP}: k must be [D, L] or [B, D, L] with B={B}, D={D} and L >= 1, got {fmt_shape(k.shape)}")
    if skip is not None and tuple(skip.shape) != (D,):
        raise ValueError(f"{_OP}: skip must be [D] = [{D}], got {fmt_shape(skip.shape)}")


def _work_dtype(u: torch.Tensor, k: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when either input is fp64 (FFTs in half precision lose the kernel's long tail)."""
    return torch.promote_types(torch.promote_types(u.dtype, k.dtype), torch.float32)


def long_conv_reference(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution of u ``[B, T, D]`` with k ``[D, L]`` or ``[B, D, L]`` (plus ``skip [D] * u``), via FFT.

    Returns ``[B, T, D]`` in ``u``'s dtype; computed in fp32 (fp64 for fp64 inputs).
    """
    T = u.shape[1]
    work = _work_dtype(u, k)
    k = k[..., :T].to(work)  # taps j >= T never reach an output y_t with t < T
    n = T + k.shape[-1] - 1  # the linear convolution's length: no wrap-around into the first T outputs
    n_fft = 1 << max(n - 1, 0).bit_length()  # a power of two: the fastest FFT size
    u_f = torch.fft.rfft(u.transpose(1, 2).to(work), n=n_fft)  # (B, D, n_fft // 2 + 1)
    k_f = torch.fft.rfft(k, n=n_fft)  # (D, F) or (B, D, F)
    y: torch.Tensor = torch.fft.irfft(u_f * k_f, n=n_fft)[..., :T].transpose(1, 2)  # (B, T, D)
    if skip is not None:
        y = y + skip.to(work) * u.to(work)
    return y.to(u.dtype)


def long_conv_naive(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """Test oracle: the defining sum, one output step and one tap at a time."""
    B, T, D = u.shape
    work = _work_dtype(u, k)
    u32, k32 = u.to(work), k.to(work).expand(B, D, k.shape[-1])  # (B, D, L)
    out = []
    for t in range(T):
        y = u32.new_zeros(B, D)
        for j in range(min(t + 1, k32.shape[-1])):
            y = y + k32[:, :, j] * u32[:, t - j]
        if skip is not None:
            y = y + skip.to(work) * u32[:, t]
        out.append(y)
    return torch.stack(out, 1).to(u.dtype)


long_conv = Op("long_conv", long_conv_reference, naive=long_conv_naive, check=check_long_conv)
