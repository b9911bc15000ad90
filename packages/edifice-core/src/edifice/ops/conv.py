"""Causal depthwise 1-D convolution over time, the short convolution of Mamba, H3, GLA and their kin.

    y_t[c] = bias[c] + sum_{k=0}^{K-1} weight[c, k] * x_{t-K+1+k}[c]

so ``weight[:, -1]`` multiplies the current input (the layout of ``nn.Conv1d(groups=C)`` weights and of the
``causal-conv1d`` kernels). Inputs before the sequence come from ``initial_state``, the ``K-1`` previous inputs, which
is what makes chunked prefill and token-by-token decoding reproduce a full forward pass.

Legend: ``B`` batch, ``T`` time, ``C`` channels, ``K`` kernel size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op

__all__ = [
    "causal_conv1d",
    "causal_conv1d_naive",
    "causal_conv1d_reference",
    "causal_conv1d_state",
    "check_causal_conv1d",
]

_OP = "causal_conv1d"


def check_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    expect_rank(_OP, "x", x, 3, "[B, T, C]")
    expect_rank(_OP, "weight", weight, 2, "[C, K]")
    expect_floating(_OP, x=x, weight=weight, bias=bias, initial_state=initial_state)
    B, _, C = x.shape
    K = weight.shape[1]
    if weight.shape[0] != C or K < 1:
        raise ValueError(f"{_OP}: weight must be [C, K] with C={C} and K >= 1, got {fmt_shape(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"{_OP}: bias must be [C] = [{C}], got {fmt_shape(bias.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, C, K - 1):
        raise ValueError(
            f"{_OP}: initial_state must be [B, C, K-1] = {fmt_shape((B, C, K - 1))}, "
            f"got {fmt_shape(initial_state.shape)}"
        )


def _with_history(x: torch.Tensor, initial_state: torch.Tensor | None, kernel_size: int) -> torch.Tensor:
    """The input channels-first with the ``K-1`` previous inputs in front: ``(B, C, K-1+T)`` in x's dtype."""
    xt = x.transpose(1, 2)  # (B, C, T)
    if initial_state is None:
        return F.pad(xt, (kernel_size - 1, 0))
    return torch.cat([initial_state.to(x.dtype), xt], dim=-1)


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal depthwise conv over time: x ``[B, T, C]``, weight ``[C, K]``, bias ``[C]`` -> y ``[B, T, C]``.

    ``initial_state`` ``[B, C, K-1]`` holds the ``K-1`` inputs before ``x`` (zeros when None); get the next one with
    :func:`causal_conv1d_state`. Runs in x's dtype (weights are cast to it).
    """
    C, K = weight.shape
    xp = _with_history(x, initial_state, K)  # (B, C, K-1+T)
    # A grouped conv with one group per channel is the depthwise sum above; no padding: the history is in xp.
    y = F.conv1d(xp, weight.to(x.dtype).unsqueeze(1), None if bias is None else bias.to(x.dtype), groups=C)
    return y.transpose(1, 2).contiguous()  # (B, T, C)


def causal_conv1d_naive(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Test oracle: the defining sum, one output step and one tap at a time."""
    B, T, C = x.shape
    K = weight.shape[1]
    history = x.new_zeros(B, K - 1, C) if initial_state is None else initial_state.transpose(1, 2).to(x.dtype)
    xs = torch.cat([history, x], 1)  # (B, K-1+T, C): input t sits at row t + K - 1
    out = []
    for t in range(T):
        y = x.new_zeros(B, C) if bias is None else bias.to(x.dtype).expand(B, C)
        for k in range(K):
            y = y + weight[:, k].to(x.dtype) * xs[:, t + k]  # x_{t-K+1+k}
        out.append(y)
    return torch.stack(out, 1)


def causal_conv1d_state(x: torch.Tensor, initial_state: torch.Tensor | None, kernel_size: int) -> torch.Tensor:
    """The conv state after ``x`` ``[B, T, C]``: its last ``K-1`` inputs (history first), ``[B, C, K-1]``."""
    expect_rank("causal_conv1d_state", "x", x, 3, "[B, T, C]")
    B, _, C = x.shape
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"causal_conv1d_state: kernel_size must be a positive int, got {kernel_size!r}")
    if initial_state is not None and tuple(initial_state.shape) != (B, C, kernel_size - 1):
        raise ValueError(
            f"causal_conv1d_state: initial_state must be [B, C, K-1] = {fmt_shape((B, C, kernel_size - 1))}, "
            f"got {fmt_shape(initial_state.shape)}"
        )
    xp = _with_history(x, initial_state, kernel_size)
    # Slice by start index: ``xp[..., -(K-1):]`` would keep everything when K = 1.
    return xp[..., xp.shape[-1] - (kernel_size - 1) :]


causal_conv1d = Op("causal_conv1d", causal_conv1d_reference, naive=causal_conv1d_naive, check=check_causal_conv1d)
