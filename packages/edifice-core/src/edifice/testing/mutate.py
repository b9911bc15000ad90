"""Mutation testing of signature tests: swap a hot op for a plausible wrong implementation (DESIGN §6).

A signature test proves an architecture's defining mechanism. If it still passes when the mechanism is broken --
attention that ignores its mask, a recurrence that never decays -- it proves nothing. ``mutate_op`` swaps an op of
:mod:`edifice.ops` for a wrong implementation for everything that calls it (models already built included), and the
test asserts that the signature test then fails::

    with mutate_op("sdpa", unmasked_sdpa):
        with pytest.raises(AssertionError):
            test_decoder_only_matches_llama()

Each wrong implementation keeps the op's signature and output shape; only the mechanism is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "MUTATIONS",
    "mutate_op",
    "no_decay_recurrence",
    "stateless_causal_conv1d",
    "unmasked_sdpa",
    "unnormalized_rms_norm",
]


def unmasked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, **ignored: Any
) -> torch.Tensor:
    """Softmax attention that ignores causality, windows, masks, positions and soft-capping (GQA kept).

    q ``[B, Hq, Tq, D]``, k ``[B, Hk, Tk, D]``, v ``[B, Hk, Tk, Dv]`` -> ``[B, Hq, Tq, Dv]``.
    """
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, Hq, Tk, D)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, Hq, Tq, Tk)
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def no_decay_recurrence(
    a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None, **ignored: Any
) -> torch.Tensor:
    """The linear recurrence with ``a_t = 1``: ``h_t = h_{t-1} + b_t``, a running sum that forgets nothing.

    b ``[B, T, ...]`` (time on dim 1), initial ``[B, ...]`` -> h ``[B, T, ...]``.
    """
    h = torch.cumsum(b.float(), dim=1)
    if initial is not None:
        h = h + initial.float().unsqueeze(1)
    return h.to(b.dtype)


def unnormalized_rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, **ignored: Any
) -> torch.Tensor:
    """RMSNorm without the normalisation: ``x * weight``."""
    return x * weight if weight is not None else x.clone()


def stateless_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    **ignored: Any,
) -> torch.Tensor:
    """A causal depthwise convolution that ignores ``initial_state`` (as if every chunk started a new sequence).

    x ``[B, T, C]``, weight ``[C, K]`` -> ``[B, T, C]``.
    """
    channels, width = weight.shape
    xt = F.pad(x.transpose(1, 2), (width - 1, 0))  # (B, C, K - 1 + T)
    y = F.conv1d(xt, weight.unsqueeze(1), bias, groups=channels)  # (B, C, T)
    return y.transpose(1, 2)


#: The ready-made wrong implementation of each op, used when ``mutate_op`` is given none.
MUTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "sdpa": unmasked_sdpa,
    "linear_recurrence": no_decay_recurrence,
    "rms_norm": unnormalized_rms_norm,
    "causal_conv1d": stateless_causal_conv1d,
}


@contextlib.contextmanager
def mutate_op(op: str, wrong_impl: Callable[..., Any] | None = None) -> Iterator[Callable[..., Any]]:
    """Within the block, every call of ``edifice.ops.<op>`` runs ``wrong_impl`` (default: ``MUTATIONS[op]``)."""
    from edifice import ops

    if wrong_impl is None:
        if op not in MUTATIONS:
            known = ", ".join(MUTATIONS)
            raise ValueError(f"mutate_op: no ready-made wrong implementation of {op!r} (known: {known}); pass one")
        wrong_impl = MUTATIONS[op]
    with ops.swap(op, wrong_impl):
        yield wrong_impl
