"""Attention whose normalisation SDPA cannot express: sigmoid, softpick, forget-gate biases and exp-value (LASER) forms.

One op, :func:`variant_attention`, covers the softmax-attention variants of the ``attention`` family whose score
normalisation or value transform is not a softmax over ``q k^T``::

    s_ij  = scale q_i . k_j + logit_bias + (c_i - c'_j)                          (score, with optional gate bias)
    p_ij  = normalizer(s_i.)_j   over the keys j that query i may attend          (probabilities)
    out_i = sum_j p_ij v_j                                   (exp_values=False)
    out_i = m + log sum_j p_ij exp(v_j - m)                  (exp_values=True, LASER)

* ``normalizer="softmax"``: ``exp(s_ij) / sum_j exp(s_ij)`` (Vaswani et al. 2017, eq. 1).
* ``normalizer="sigmoid"``: ``sigmoid(s_ij)``, each weight on its own, no sum over keys (Ramapuram et al. 2025,
  "Theory, Analysis, and Best Practices for Sigmoid Self-Attention", arXiv:2409.04431, eq. 2 with ``b = -log n``
  passed as ``logit_bias``).
* ``normalizer="softpick"``: ``ReLU(e^{s_ij} - 1) / (sum_j |e^{s_ij} - 1| + eps)`` (Zuhri et al. 2025, "Softpick: No
  Attention Sink, No Massive Activations with Rectified Softmax", arXiv:2504.20966, eq. 3), computed in the
  numerically stable form: with ``m = max(max_j s_ij, 0)`` numerator and denominator are multiplied by ``e^{-m}``,
  ``ReLU(e^{s-m} - e^{-m}) / (sum |e^{s-m} - e^{-m}| + eps e^{-m})``. Masked keys add nothing to either sum.
* ``q_log_gates``/``k_log_gates`` (``c``, ``c'``): the Forgetting Transformer's bias ``D_ij = sum_{l=j+1..i} log f_l
  = c_i - c_j`` with ``c`` the cumulative log forget gates (Lin et al. 2025, arXiv:2503.02130, eq. 5-6), one per query
  head. They are given separately for queries and keys so that a decode step against a cache passes the running sum.
* ``exp_values=True``: LASER (Duvvuri & Dhillon 2025, "LASER: Attention with Exponential Transformation",
  arXiv:2411.03493, eq. 4-5): attention of ``exp(V)`` followed by ``log``, with the log-sum-exp shift ``m`` the maximum
  of each value channel over the keys any query of the call may attend (it cancels exactly; the paper's trick).

Masking follows :func:`edifice.ops.sdpa` (absolute positions, ``causal``, ``window``, bool or additive ``attn_mask``,
GQA); a query with no key left returns zeros. Scores, normalisation and the value transform run in fp32; the output
has q's dtype. No dropout: none of these variants uses it on the attention weights.

Legend: ``B`` batch, ``Hq``/``Hk`` query and key/value heads, ``Tq``/``Tk`` query and key lengths, ``D`` head size,
``Dv`` value head size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edifice.ops._checks import expect_floating, fmt_shape
from edifice.ops._registry import Op
from edifice.ops.attention import _masked_softmax, _positions_mask, check_sdpa

__all__ = [
    "NORMALIZERS",
    "check_variant_attention",
    "normalize_scores",
    "variant_attention",
    "variant_attention_naive",
    "variant_attention_reference",
]

_OP = "variant_attention"
#: The score normalisations :func:`variant_attention` knows.
NORMALIZERS = ("softmax", "sigmoid", "softpick")
#: Softpick's epsilon in the denominator (keeps an all-negative row at exactly zero output).
SOFTPICK_EPS = 1e-6


def check_variant_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    normalizer: str = "softmax",
    logit_bias: float = 0.0,
    q_log_gates: torch.Tensor | None = None,
    k_log_gates: torch.Tensor | None = None,
    exp_values: bool = False,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    check_sdpa(
        q, k, v, causal=causal, window=window, attn_mask=attn_mask, q_positions=q_positions, k_positions=k_positions
    )
    if normalizer not in NORMALIZERS:
        raise ValueError(f"{_OP}: normalizer must be one of {', '.join(NORMALIZERS)}, got {normalizer!r}")
    if isinstance(logit_bias, bool) or not isinstance(logit_bias, int | float) or not math.isfinite(logit_bias):
        raise TypeError(f"{_OP}: logit_bias must be a finite float, got {logit_bias!r}")
    if (q_log_gates is None) != (k_log_gates is None):
        raise ValueError(f"{_OP}: pass both q_log_gates [B, Hq, Tq] and k_log_gates [B, Hq, Tk], or neither")
    if q_log_gates is not None and k_log_gates is not None:
        expect_floating(_OP, q_log_gates=q_log_gates, k_log_gates=k_log_gates)
        B, Hq, Tq, _ = q.shape
        Tk = k.shape[2]
        for name, gates, want in (("q_log_gates", q_log_gates, (B, Hq, Tq)), ("k_log_gates", k_log_gates, (B, Hq, Tk))):
            if tuple(gates.shape) != want:
                raise ValueError(f"{_OP}: {name} must be {fmt_shape(want)}, got {fmt_shape(gates.shape)}")


def normalize_scores(scores: torch.Tensor, allowed: torch.Tensor | None, normalizer: str) -> torch.Tensor:
    """Attention weights from fp32 ``scores [..., Tk]`` over the keys ``allowed`` (bool, broadcastable; None = all)."""
    if normalizer == "softmax":
        return _masked_softmax(scores if allowed is None else scores.masked_fill(~allowed, float("-inf")))
    if normalizer == "sigmoid":
        probs = torch.sigmoid(scores)
        return probs if allowed is None else probs.masked_fill(~allowed, 0.0)
    # softpick: e^{-m} (e^s - 1) with m = max(row max, 0) >= 0, so nothing overflows and e^{-m} <= 1.
    masked = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
    m = masked.amax(-1, keepdim=True).detach().clamp_min(0.0)  # a fully masked row has max -inf -> 0
    shifted = torch.exp(masked - m) - torch.exp(-m)  # e^{-m}(e^s - 1); a masked key gives -e^{-m} here
    if allowed is not None:
        shifted = shifted.masked_fill(~allowed, 0.0)
    return F.relu(shifted) / (shifted.abs().sum(-1, keepdim=True) + SOFTPICK_EPS * torch.exp(-m))


def variant_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    normalizer: str = "softmax",
    logit_bias: float = 0.0,
    q_log_gates: torch.Tensor | None = None,
    k_log_gates: torch.Tensor | None = None,
    exp_values: bool = False,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """q ``[B, Hq, Tq, D]``, k ``[B, Hk, Tk, D]``, v ``[B, Hk, Tk, Dv]`` -> ``[B, Hq, Tq, Dv]`` (see module doc).

    ``q_log_gates [B, Hq, Tq]`` and ``k_log_gates [B, Hq, Tk]`` add ``q_log_gates[i] - k_log_gates[j]`` to the scores;
    ``logit_bias`` is added to every score; masking is :func:`edifice.ops.sdpa`'s. Vectorised over heads and time.
    """
    B, Hq, Tq, D = q.shape
    Hk, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hk
    scale = D**-0.5 if scale is None else scale
    # GQA without repeating k/v: the G query heads of one kv head are extra rows of one matmul.
    scores = torch.matmul(q.reshape(B, Hk, G * Tq, D).float(), k.float().transpose(-1, -2)).float() * scale
    scores = scores.reshape(B, Hq, Tq, Tk) + logit_bias
    if q_log_gates is not None and k_log_gates is not None:
        scores = scores + (q_log_gates.float().unsqueeze(-1) - k_log_gates.float().unsqueeze(-2))  # D_ij = c_i - c_j
    allowed = _positions_mask(q, k, causal, window, q_positions, k_positions)  # (B|1, 1, Tq, Tk)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            scores = scores + attn_mask.float()
    finite = torch.isfinite(scores)  # an additive -inf mask removes a key for every normaliser
    allowed = finite if allowed is None else allowed & finite
    probs = normalize_scores(scores, allowed, normalizer)  # (B, Hq, Tq, Tk) fp32
    vf = v.float()
    if exp_values:
        # LASER eq. 5: m = max over the keys anyone attends of each value channel; exp(v - m) <= 1.
        used = allowed.expand(B, Hq, Tq, Tk).reshape(B, Hk, G * Tq, Tk).any(dim=2)  # (B, Hk, Tk)
        m = vf.masked_fill(~used.unsqueeze(-1), float("-inf")).amax(dim=2, keepdim=True)  # (B, Hk, 1, Dv)
        m = torch.where(torch.isfinite(m), m, 0.0).detach()
        vf = torch.exp((vf - m).masked_fill(~used.unsqueeze(-1), float("-inf")))
    out = torch.matmul(probs.reshape(B, Hk, G * Tq, Tk), vf)  # (B, Hk, G*Tq, Dv)
    if exp_values:
        alive = allowed.expand(B, Hq, Tq, Tk).any(-1).reshape(B, Hk, G * Tq, 1)
        out = torch.log(out.clamp_min(torch.finfo(torch.float32).tiny)) + m
        out = torch.where(alive, out, 0.0)
    return out.reshape(B, Hq, Tq, Dv).to(q.dtype)


def variant_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    normalizer: str = "softmax",
    logit_bias: float = 0.0,
    q_log_gates: torch.Tensor | None = None,
    k_log_gates: torch.Tensor | None = None,
    exp_values: bool = False,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Test oracle: one query at a time in fp64, each normaliser written as its paper's formula (no stable rewrite).

    LASER's output is ``log sum_j p_ij exp(v_j)`` evaluated with ``torch.logsumexp`` over ``log p_ij + v_j``.
    """
    B, Hq, Tq, D = q.shape
    Hk, Tk = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    # Which keys each query may see by position is sdpa's rule (tested against its own loop oracle).
    by_position = _positions_mask(q, k, causal, window, q_positions, k_positions)
    allowed = torch.ones(B, Hq, Tq, Tk, dtype=torch.bool) if by_position is None else by_position.expand(B, Hq, Tq, Tk)
    mask = None if attn_mask is None else attn_mask.expand(B, Hq, Tq, Tk)
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    rows = []
    for b in range(B):
        for h in range(Hq):
            kv = h // (Hq // Hk)
            for i in range(Tq):
                s = (k[b, kv].double() @ q[b, h, i].double()) * scale + logit_bias  # (Tk,)
                if q_log_gates is not None and k_log_gates is not None:
                    s = s + q_log_gates[b, h, i].double() - k_log_gates[b, h].double()
                if mask is not None and mask.dtype != torch.bool:
                    s = s + mask[b, h, i].double()
                keep = allowed[b, h, i].tolist()
                idx = [j for j in range(Tk) if keep[j] and math.isfinite(float(s[j].detach()))]
                if not idx:
                    rows.append(torch.zeros(v.shape[-1], dtype=torch.float64))
                    continue
                si = s[idx]
                if normalizer == "softmax":
                    p = torch.exp(si) / torch.exp(si).sum()
                elif normalizer == "sigmoid":
                    p = 1.0 / (1.0 + torch.exp(-si))
                else:  # softpick, eq. 3 as written
                    p = torch.relu(torch.exp(si) - 1) / ((torch.exp(si) - 1).abs().sum() + SOFTPICK_EPS)
                vals = v[b, kv, idx].double()  # (n, Dv)
                if exp_values:
                    rows.append(torch.logsumexp(torch.log(p).unsqueeze(-1) + vals, dim=0))
                else:
                    rows.append(p @ vals)
    return torch.stack(rows).reshape(B, Hq, Tq, v.shape[-1]).to(q.dtype)


variant_attention = Op(
    "variant_attention", variant_attention_reference, naive=variant_attention_naive, check=check_variant_attention
)
