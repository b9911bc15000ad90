"""Scaled dot-product attention with causal and sliding-window masks, GQA, soft-capping and explicit positions.

    out = softmax(mask(cap(q k^T * scale))) v

(Vaswani et al., 2017, "Attention Is All You Need", eq. 1), with grouped-query attention (Ainslie et al., 2023,
arXiv:2305.13245: query head ``h`` reads key/value head ``h // (Hq // Hk)``), Mistral's sliding window (Jiang et al.,
2023, arXiv:2310.06825: a query attends the last ``window`` positions) and Gemma 2's logit soft-capping (Gemma Team,
2024, arXiv:2408.00118: ``cap(s) = softcap * tanh(s / softcap)``, applied before masking).

Legend: ``B`` batch, ``Hq``/``Hk`` query and key/value heads, ``G = Hq // Hk`` query heads per key/value head,
``Tq``/``Tk`` query and key lengths, ``D`` query/key head size, ``Dv`` value head size.

Positions are absolute: keys default to ``0 .. Tk-1`` and queries to the *last* ``Tq`` of them (``Tk-Tq .. Tk-1``), so
one call covers a full sequence, a prefill and a decode step against a KV cache. ``causal`` keeps keys with
``key_pos <= query_pos``; ``window=w`` keeps ``query_pos - key_pos < w`` (with ``causal``) or
``|query_pos - key_pos| < w`` (without: symmetric local attention). A query row with no key left returns zeros, and
zero gradients, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edifice.ops._checks import broadcasts_to, expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op, register_core_override
from edifice.spec import OpOverride

__all__ = ["check_sdpa", "sdpa", "sdpa_naive", "sdpa_reference", "torch_sdpa", "torch_sdpa_applies"]

_OP = "sdpa"


def check_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    dropout_p: float = 0.0,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when :func:`sdpa`'s arguments are invalid."""
    expect_rank(_OP, "q", q, 4, "[B, Hq, Tq, D]")
    expect_rank(_OP, "k", k, 4, "[B, Hk, Tk, D]")
    expect_rank(_OP, "v", v, 4, "[B, Hk, Tk, Dv]")
    expect_floating(_OP, q=q, k=k, v=v)
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"{_OP}: q, k and v must share a dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    B, Hq, Tq, D = q.shape
    _, Hk, Tk, _ = k.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"{_OP}: batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[3] != D:
        raise ValueError(
            f"{_OP}: q and k must share the head size D, got q {fmt_shape(q.shape)}, k {fmt_shape(k.shape)}"
        )
    if v.shape[1] != Hk or v.shape[2] != Tk:
        raise ValueError(f"{_OP}: v must be [B, Hk, Tk, Dv] = [{B}, {Hk}, {Tk}, Dv], got {fmt_shape(v.shape)}")
    if Hq % Hk != 0:
        raise ValueError(f"{_OP}: query heads Hq={Hq} must be a multiple of key/value heads Hk={Hk} (GQA)")
    if Tk == 0:
        raise ValueError(f"{_OP}: k and v need at least one position, got Tk=0")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"{_OP}: window must be a positive int or None, got {window!r}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"{_OP}: softcap must be positive or None, got {softcap!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{_OP}: dropout_p must be in [0, 1), got {dropout_p!r}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"{_OP}: attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"{_OP}: attn_mask must be bool (True = attend) or float (additive), got {attn_mask.dtype}")
        if not broadcasts_to(attn_mask.shape, (B, Hq, Tq, Tk)):
            raise ValueError(
                f"{_OP}: attn_mask must broadcast to [B, Hq, Tq, Tk] = {fmt_shape((B, Hq, Tq, Tk))}, "
                f"got {fmt_shape(attn_mask.shape)}"
            )
    for name, pos, T, sym in (("q_positions", q_positions, Tq, "Tq"), ("k_positions", k_positions, Tk, "Tk")):
        if pos is None:
            continue
        if not isinstance(pos, torch.Tensor) or pos.dtype == torch.bool:
            raise TypeError(f"{_OP}: {name} must be a numeric tensor [{sym}] or [B, {sym}]")
        if pos.shape not in ((T,), (B, T)):
            raise ValueError(
                f"{_OP}: {name} must be [{sym}] = [{T}] or [B, {sym}] = [{B}, {T}], got {fmt_shape(pos.shape)}"
            )


def _positions_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    causal: bool,
    window: int | None,
    q_positions: torch.Tensor | None,
    k_positions: torch.Tensor | None,
) -> torch.Tensor | None:
    """Which keys each query may attend by position, ``(B or 1, 1, Tq, Tk)`` bool, or None when all may."""
    if not causal and window is None:
        return None
    Tq, Tk = q.shape[2], k.shape[2]
    kp = torch.arange(Tk, device=q.device) if k_positions is None else k_positions
    qp = torch.arange(Tk - Tq, Tk, device=q.device) if q_positions is None else q_positions
    dist = qp.unsqueeze(-1) - kp.unsqueeze(-2)  # (Tq, Tk) or (B, Tq, Tk): how far each key lies behind each query
    if window is None:  # causal only
        allowed = dist >= 0
    elif causal:  # Mistral's sliding window: the last `window` positions up to and including the query's own
        allowed = (dist >= 0) & (dist < window)
    else:  # symmetric local attention
        allowed = dist.abs() < window
    return allowed.unsqueeze(0).unsqueeze(0) if allowed.dim() == 2 else allowed.unsqueeze(1)


def _masked_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim that maps a row of only ``-inf`` to zeros, in the forward and backward pass."""
    # Softmax is shift-invariant, so the shift needs no gradient; a fully masked row has max -inf, and any finite
    # shift makes every exp() exactly 0 there.
    shift = scores.amax(-1, keepdim=True).detach()
    shift = torch.where(torch.isfinite(shift), shift, 0.0)
    e = torch.exp(scores - shift)
    denom = e.sum(-1, keepdim=True)
    # Dividing by 1 (not by a tiny clamp) keeps the gradient of a dead row finite: e = 0 there.
    return e / torch.where(denom > 0, denom, 1.0)


def sdpa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention: q ``[B, Hq, Tq, D]``, k ``[B, Hk, Tk, D]``, v ``[B, Hk, Tk, Dv]`` -> ``[B, Hq, Tq, Dv]``.

    ``causal`` and ``window`` mask by absolute position (``q_positions``/``k_positions``, ``[T]`` or ``[B, T]``;
    queries default to the last ``Tq`` of the ``Tk`` key positions). ``attn_mask`` is bool (True = attend) or float
    (added to the scores), broadcastable to ``[B, Hq, Tq, Tk]``. ``softcap`` caps the scores before masking.
    ``scale`` defaults to ``D ** -0.5``. Scores and softmax run in fp32; the output has q's dtype. ``dropout_p``
    drops attention weights (pass 0 in eval). A query with no key left gets zeros.
    """
    B, Hq, Tq, D = q.shape
    Hk, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hk
    scale = D**-0.5 if scale is None else scale
    # GQA without repeating k/v: the G query heads of one kv head become extra rows of one matmul (eq. 1 per group).
    qg = q.reshape(B, Hk, G * Tq, D)
    # .float() after the matmul too: under autocast the matmul runs in low precision, the softmax must not.
    scores = torch.matmul(qg.float(), k.float().transpose(-1, -2)).float() * scale  # (B, Hk, G*Tq, Tk)
    scores = scores.reshape(B, Hq, Tq, Tk)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)  # Gemma 2: cap the logits before any mask
    allowed = _positions_mask(q, k, causal, window, q_positions, k_positions)  # (B|1, 1, Tq, Tk)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            scores = scores + attn_mask.float()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = _masked_softmax(scores)  # (B, Hq, Tq, Tk), fp32
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    out = torch.matmul(probs.to(v.dtype).reshape(B, Hk, G * Tq, Tk), v)  # (B, Hk, G*Tq, Dv)
    return out.reshape(B, Hq, Tq, Dv).to(q.dtype)


def sdpa_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Test oracle for :func:`sdpa_reference`: one query at a time, softmax over the keys it may see (no dropout)."""
    if dropout_p:
        raise ValueError("sdpa_naive is a deterministic oracle; it takes no dropout")
    B, Hq, Tq, D = q.shape
    Hk, Tk = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    qpos = (torch.arange(Tk - Tq, Tk) if q_positions is None else q_positions.cpu()).expand(B, Tq).tolist()
    kpos = (torch.arange(Tk) if k_positions is None else k_positions.cpu()).expand(B, Tk).tolist()
    mask = None if attn_mask is None else attn_mask.expand(B, Hq, Tq, Tk)
    rows = []
    for b in range(B):
        for h in range(Hq):
            kv = h // (Hq // Hk)
            for i in range(Tq):
                s = (k[b, kv].float() @ q[b, h, i].float()) * scale  # (Tk,)
                if softcap is not None:
                    s = softcap * torch.tanh(s / softcap)
                keep = []
                for j in range(Tk):
                    dist = qpos[b][i] - kpos[b][j]
                    ok = not (causal and dist < 0)
                    if window is not None:
                        ok = ok and (dist < window if causal else abs(dist) < window)
                    keep.append(ok)
                if mask is not None and mask.dtype == torch.bool:
                    keep = [a and bool(m) for a, m in zip(keep, mask[b, h, i].tolist(), strict=True)]
                elif mask is not None:
                    s = s + mask[b, h, i].float()
                keep = [a and bool(f) for a, f in zip(keep, torch.isfinite(s).tolist(), strict=True)]
                idx = [j for j in range(Tk) if keep[j]]
                if idx:
                    w = torch.softmax(s[idx], dim=0)
                    rows.append((w @ v[b, kv, idx].float()).to(q.dtype))
                else:
                    rows.append(q.new_zeros(v.shape[-1]))
    return torch.stack(rows).reshape(B, Hq, Tq, v.shape[-1])


def torch_sdpa_applies(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    dropout_p: float = 0.0,
) -> bool:
    """Whether PyTorch's own SDPA computes this call exactly as :func:`sdpa_reference` does."""
    # torch's is_causal aligns the causal mask top-left (query i sees keys <= i); ours aligns it to the queries'
    # positions (bottom-right). They agree when Tq == Tk, and for one query, which sees every key. Masks, windows and
    # positions are left to the reference because torch's SDPA returns NaN for a fully masked row.
    Tq, Tk = q.shape[2], k.shape[2]
    return (
        softcap is None
        and window is None
        and attn_mask is None
        and q_positions is None
        and k_positions is None
        and (not causal or Tq == Tk or Tq == 1)
    )


def torch_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """:func:`sdpa` through ``torch.nn.functional.scaled_dot_product_attention`` (where :func:`torch_sdpa_applies`)."""
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        dropout_p=dropout_p,
        is_causal=causal and q.shape[2] > 1,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


sdpa = Op("sdpa", sdpa_reference, naive=sdpa_naive, check=check_sdpa)

# Core's own override: PyTorch's fused SDPA (flash / memory-efficient / cuDNN / CPU flash) where it means the same
# thing. The low priority lets any plugin kernel registered with the default priority 0 win.
register_core_override(
    OpOverride(
        op="sdpa",
        name="torch_sdpa",
        impl="edifice.ops.attention:torch_sdpa",
        predicate="edifice.ops.attention:torch_sdpa_applies",
        device="*",
        dtypes=("float32", "bfloat16", "float16", "float64"),
        priority=-100,
    )
)
