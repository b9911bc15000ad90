"""Multi-token attention: causal softmax attention whose scores are convolved over queries, keys and heads (MTA).

Golovneva, Wang, Weston & Sukhbaatar (2025), "Multi-Token Attention", arXiv:2504.00927. With ``Â = q kᵀ · scale``
per head and the causal validity ``M[i, j] = (k_pos[j] <= q_pos[i]) ∧ attn_mask``::

    A  = Softmax(Mask_-∞(Conv2d_θ(Mask_0(Â))))          key-query convolution, pre-softmax (§3.1, eq. 2)
    A' = head mixing of A within groups of c_h heads     post-softmax: A'^h = Σ_{h' in group} w[h, h'] A^{h'} (§3.2)
    out = A' v

* **Key-query convolution** (§3.1): one ``c_q × c_k`` kernel per head, causal over queries (query ``i`` reads the
  scores of queries ``i - c_q + 1 .. i``) and centred over keys (keys ``j - ⌈c_k/2⌉ + 1 .. j + ⌊c_k/2⌋``); the
  paper's eq. (1) in terms of its ``θ_{i', j'}`` (``i' = 0 .. c_q - 1``, ``j' = -⌊c_k/2⌋ .. ⌈c_k/2⌉ - 1``)::

      conv[i, j] = Σ_{i', j'} θ_{i', j'} · Mask_0(Â)[i - i', j - j']

  ``kq_weight [H, c_q, c_k]`` is stored in ``torch.nn.functional.conv2d``'s (cross-correlation) layout:
  ``θ_{i', j'} = kq_weight[h, c_q - 1 - i', ⌈c_k/2⌉ - 1 - j']``; the identity kernel (plain attention) has its one
  at ``[c_q - 1, ⌈c_k/2⌉ - 1]``. Masking is the paper's simplified form (eq. 2): future scores are zeroed before the
  convolution and set to ``-∞`` after it. Out-of-range queries and keys are zeros (the convolution's padding).
* **Head mixing** (§3.2), post-softmax: the ``H`` heads form ``H / c_h`` groups of ``c_h`` consecutive heads;
  ``head_weight [H / c_h, c_h, c_h]`` maps the group's weights ``A^{h'}`` to
  ``A'^h = Σ_{h'} head_weight[g, h, h'] A^{h'}`` (identity: plain attention).

Queries are the last ``Tq`` of the ``Tk`` key positions unless ``q_positions``/``k_positions`` say otherwise; query
rows are convolved in the order given, so a decoding step passes its last ``c_q - 1`` queries before the new one
and reads the last row. Keys are convolved in slot order (slots must be in position order; no ring buffer). A query
with no valid key gets zeros. Scores compute in fp32 (fp64 for fp64 inputs); the output has ``v``'s dtype.

Layout: q ``[B, H, Tq, D]``, k ``[B, Hk, Tk, D]``, v ``[B, Hk, Tk, Dv]`` (``Hk`` divides ``H``; grouped key/value
heads are repeated) -> ``[B, H, Tq, Dv]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edifice.dtypes import compute_dtype
from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op

__all__ = [
    "check_multi_token_attention",
    "multi_token_attention",
    "multi_token_attention_naive",
    "multi_token_attention_reference",
]


def check_multi_token_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kq_weight: torch.Tensor | None = None,
    head_weight: torch.Tensor | None = None,
    **_kwargs: object,
) -> None:
    """Validate ranks, matching sizes and the kernels' shapes."""
    name = "multi_token_attention"
    for label, t, layout in (("q", q, "[B, H, Tq, D]"), ("k", k, "[B, Hk, Tk, D]"), ("v", v, "[B, Hk, Tk, Dv]")):
        expect_rank(name, label, t, 4, layout)
    expect_floating(name, q=q, k=k, v=v, kq_weight=kq_weight, head_weight=head_weight)
    B, H, _, D = q.shape
    if k.shape[0] != B or k.shape[-1] != D or v.shape[:3] != k.shape[:3] or H % k.shape[1]:
        raise ValueError(
            f"{name}: expected q [B, H, Tq, D], k [B, Hk, Tk, D], v [B, Hk, Tk, Dv] with Hk | H, got q "
            f"{fmt_shape(q.shape)}, k {fmt_shape(k.shape)}, v {fmt_shape(v.shape)}"
        )
    if kq_weight is not None and (kq_weight.dim() != 3 or kq_weight.shape[0] != H):
        raise ValueError(f"{name}: kq_weight expected [H={H}, c_q, c_k], got {fmt_shape(kq_weight.shape)}")
    if head_weight is not None:
        if head_weight.dim() != 3 or head_weight.shape[1] != head_weight.shape[2]:
            raise ValueError(f"{name}: head_weight expected [H / c_h, c_h, c_h], got {fmt_shape(head_weight.shape)}")
        if head_weight.shape[0] * head_weight.shape[1] != H:
            raise ValueError(f"{name}: head_weight {fmt_shape(head_weight.shape)} must cover the H={H} heads in groups")


def _valid(
    q: torch.Tensor,
    k: torch.Tensor,
    q_positions: torch.Tensor | None,
    k_positions: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Bool ``[B | 1, 1 | H, Tq, Tk]``: key ``j`` is at or before query ``i`` (and allowed by ``attn_mask``)."""
    Tq, Tk = q.shape[2], k.shape[2]
    qp = torch.arange(Tk - Tq, Tk, device=q.device) if q_positions is None else q_positions
    kp = torch.arange(Tk, device=q.device) if k_positions is None else k_positions
    qp = qp.reshape(-1, 1, Tq, 1) if qp.dim() == 2 else qp.reshape(1, 1, Tq, 1)
    kp = kp.reshape(-1, 1, 1, Tk) if kp.dim() == 2 else kp.reshape(1, 1, 1, Tk)
    valid = kp <= qp
    if attn_mask is not None:
        valid = valid & attn_mask.bool()
    return valid


def multi_token_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kq_weight: torch.Tensor | None = None,
    head_weight: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Vectorised MTA: a depthwise ``conv2d`` over the masked scores, then a grouped head mix of the weights."""
    dtype = compute_dtype(q, k, v)
    H = q.shape[1]
    groups = H // k.shape[1]
    k_, v_ = (t.to(dtype).repeat_interleave(groups, dim=1) for t in (k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.to(dtype) @ k_.transpose(-1, -2)) * scale  # (B, H, Tq, Tk)
    valid = _valid(q, k, q_positions, k_positions, attn_mask)
    if kq_weight is not None:
        c_q, c_k = kq_weight.shape[1:]
        left = (c_k + 1) // 2 - 1  # ⌈c_k/2⌉ - 1 keys after j are read through j' < 0
        padded = F.pad(scores.masked_fill(~valid, 0.0), (left, c_k - 1 - left, c_q - 1, 0))  # Mask_0, zero borders
        scores = F.conv2d(padded, kq_weight.to(dtype).unsqueeze(1), groups=H)  # (B, H, Tq, Tk)
    weights = scores.masked_fill(~valid, float("-inf")).softmax(dim=-1).nan_to_num(0.0)  # Mask_-∞, softmax
    if head_weight is not None:
        B, _, Tq, Tk = weights.shape
        G, c_h, _ = head_weight.shape
        grouped = weights.view(B, G, c_h, Tq, Tk)
        weights = torch.einsum("goh,bghqk->bgoqk", head_weight.to(dtype), grouped).reshape(B, H, Tq, Tk)
    return (weights @ v_).to(v.dtype)


def multi_token_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kq_weight: torch.Tensor | None = None,
    head_weight: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loop oracle of eq. (1)-(2) and §3.2 in the paper's ``θ_{i', j'}`` indexing (tiny shapes only)."""
    dtype = compute_dtype(q, k, v)
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    groups = H // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    valid = _valid(q, k, q_positions, k_positions, attn_mask).expand(B, H, Tq, Tk)
    weights = torch.zeros(B, H, Tq, Tk, dtype=dtype)
    for b in range(B):
        for h in range(H):
            qb, kb = q[b, h].to(dtype), k[b, h // groups].to(dtype)
            raw = [[float(qb[i] @ kb[j]) * scale for j in range(Tk)] for i in range(Tq)]
            for i in range(Tq):
                logits = torch.full((Tk,), float("-inf"), dtype=dtype)
                for j in range(Tk):
                    if not valid[b, h, i, j]:
                        continue
                    if kq_weight is None:
                        logits[j] = raw[i][j]
                        continue
                    c_q, c_k = kq_weight.shape[1:]
                    total = 0.0
                    for di in range(c_q):  # i' = 0 .. c_q - 1
                        for dj in range(-(c_k // 2), (c_k + 1) // 2):  # j' = -⌊c_k/2⌋ .. ⌈c_k/2⌉ - 1
                            r, c = i - di, j - dj
                            if 0 <= r < Tq and 0 <= c < Tk and valid[b, h, r, c]:
                                theta = float(kq_weight[h, c_q - 1 - di, (c_k + 1) // 2 - 1 - dj])
                                total += theta * raw[r][c]
                    logits[j] = total
                if bool(torch.isfinite(logits).any()):
                    weights[b, h, i] = torch.softmax(logits, dim=0)
    if head_weight is not None:
        mixed = torch.zeros_like(weights)
        c_h = head_weight.shape[1]
        for h in range(H):
            g, o = divmod(h, c_h)
            for src in range(c_h):
                mixed[:, h] += float(head_weight[g, o, src]) * weights[:, g * c_h + src]
        weights = mixed
    out = torch.zeros(B, H, Tq, v.shape[-1], dtype=dtype)
    for b in range(B):
        for h in range(H):
            out[b, h] = weights[b, h] @ v[b, h // groups].to(dtype)
    return out.to(v.dtype)


multi_token_attention = Op(
    "multi_token_attention",
    multi_token_attention_reference,
    naive=multi_token_attention_naive,
    check=check_multi_token_attention,
)
