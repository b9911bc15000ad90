"""Boolean attention masks: ``True`` means *may attend*.

Masks are built from positions, so one rule covers a full sequence, a prefill against a longer cache and a packed
batch: query at position ``i`` sees key at position ``j`` when ``j <= i`` (causal) and ``i - j < window`` (sliding
window, the query itself included, as in Mistral). Shapes broadcast in the attention convention ``[B, H, Tq, Tk]``:
a causal mask is ``[Tq, Tk]``, a padding mask ``[B, 1, 1, Tk]``.
"""

from __future__ import annotations

import torch

__all__ = [
    "causal_mask",
    "combine_masks",
    "lengths_to_mask",
    "padding_mask",
    "position_mask",
    "segment_mask",
    "sliding_window_mask",
]


def position_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, *, window: int | None = None) -> torch.Tensor:
    """Causal (optionally windowed) mask from positions ``[..., Tq]`` and ``[..., Tk]`` -> ``[..., Tq, Tk]`` bool."""
    if window is not None and window <= 0:
        raise ValueError(f"window must be a positive number of positions, got {window}")
    distance = q_positions.unsqueeze(-1) - k_positions.unsqueeze(-2)  # (..., Tq, Tk): i - j
    mask = distance >= 0
    if window is not None:
        mask = mask & (distance < window)
    return mask


def causal_mask(
    q_len: int, kv_len: int | None = None, *, window: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``[q_len, kv_len]`` causal mask; with ``kv_len > q_len`` the queries are the last ``q_len`` positions."""
    kv_len = q_len if kv_len is None else kv_len
    if q_len < 0 or kv_len < q_len:
        raise ValueError(f"causal_mask: need 0 <= q_len <= kv_len, got q_len={q_len}, kv_len={kv_len}")
    keys = torch.arange(kv_len, device=device)
    return position_mask(keys[kv_len - q_len :], keys, window=window)


def sliding_window_mask(
    q_len: int, window: int, kv_len: int | None = None, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """``[q_len, kv_len]`` causal mask where each query sees itself and the ``window - 1`` positions before it."""
    return causal_mask(q_len, kv_len, window=window, device=device)


def segment_mask(q_segments: torch.Tensor, k_segments: torch.Tensor) -> torch.Tensor:
    """Block-diagonal mask for packed sequences: segment ids ``[..., Tq]``, ``[..., Tk]`` -> ``[..., Tq, Tk]``."""
    return q_segments.unsqueeze(-1) == k_segments.unsqueeze(-2)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Key padding mask ``[B, T]`` (bool, or 0/1 integers; True/1 = real token) -> ``[B, 1, 1, T]`` bool."""
    if attention_mask.dim() != 2:
        raise ValueError(f"padding_mask: expected attention_mask [B, T], got {list(attention_mask.shape)}")
    if attention_mask.dtype.is_floating_point or attention_mask.is_complex():
        raise TypeError(f"padding_mask: attention_mask must be bool or integer 0/1, got {attention_mask.dtype}")
    return attention_mask.bool()[:, None, None, :]


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Sequence lengths ``[B]`` -> ``[B, max_len]`` bool, True on the first ``lengths[b]`` positions."""
    if lengths.dim() != 1:
        raise ValueError(f"lengths_to_mask: expected lengths [B], got {list(lengths.shape)}")
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Logical AND of broadcastable bool masks, skipping ``None``; ``None`` when none is given."""
    out: torch.Tensor | None = None
    for mask in masks:
        if mask is None:
            continue
        if mask.dtype != torch.bool:
            raise TypeError(f"combine_masks: masks must be bool (True = attend), got {mask.dtype}")
        out = mask if out is None else out & mask
    return out
