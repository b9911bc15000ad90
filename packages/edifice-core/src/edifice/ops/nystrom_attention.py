"""Nyström attention: softmax attention approximated through ``m`` landmarks (Nyströmformer).

Xiong et al. (2021), "Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention", AAAI 2021,
https://arxiv.org/abs/2102.03902. Per head, with ``q, k`` already scaled (the paper and transformers divide each by
``d^{1/4}``, so ``q kᵀ`` carries ``1/√d``), landmarks ``q̃, k̃ [m, d]`` and ``Z⁺`` the iterative pseudo-inverse::

    Ŝ V = softmax(q k̃ᵀ) · (softmax(q̃ k̃ᵀ))⁺ · (softmax(q̃ kᵀ) V)                               (eq. 14)

* **Segment means** (§3.2, eq. 12): landmark ``i`` is the mean of the queries (keys) of segment ``i``. With
  ``T = m · l`` the segments are the paper's ``l``-long blocks; otherwise ``T`` is cut into ``m`` contiguous
  segments whose sizes differ by at most one (``torch.tensor_split``'s rule), which equals the paper's for ``m | T``.
* **Moore-Penrose inverse** (§3.3, eq. 16, after Razavi et al. 2014): ``Z₀ = Aᵀ / (‖A‖₁ ‖A‖_∞)`` and
  ``Z_{j+1} = ¼ Z_j (13 I − A Z_j (15 I − A Z_j (7 I − A Z_j)))``; ``A`` is row-stochastic, so ``‖A‖_∞ = 1`` and
  ``‖A‖₁`` is the largest column sum, per batch row and head (the authors' and transformers' "original" option takes
  the maximum over the whole batch instead, which couples samples; transformers' other option is this one). The
  paper uses 6 iterations.

:data:`nystrom_attention` is an op (a kernel may override it); ``.naive`` is a per-(batch, head) loop oracle with
explicit segment slicing. Products compute in fp32 (fp64 for fp64 inputs); the output has ``v``'s dtype.

Layout: q, k ``[B, H, T, D]``, v ``[B, H, T, Dv]`` -> ``[B, H, T, Dv]``; ``num_landmarks`` ``m >= 1`` (``m > T`` uses
``m = T``).
"""

from __future__ import annotations

import torch

from edifice.dtypes import compute_dtype
from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op

__all__ = [
    "check_nystrom_attention",
    "iterative_pinv",
    "nystrom_attention",
    "nystrom_attention_naive",
    "nystrom_attention_reference",
    "segment_means_matrix",
]

_OP = "nystrom_attention"


def check_nystrom_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_landmarks: int, pinv_iters: int = 6
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        expect_rank(_OP, name, t, 4, "[B, H, T, D]")
    expect_floating(_OP, q=q, k=k, v=v)
    if q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{_OP}: q, k must be [B, H, T, D] and v [B, H, T, Dv] alike, got {fmt_shape(q.shape)}, "
            f"{fmt_shape(k.shape)}, {fmt_shape(v.shape)}"
        )
    if not isinstance(num_landmarks, int) or num_landmarks < 1:
        raise ValueError(f"{_OP}: num_landmarks must be an integer >= 1, got {num_landmarks!r}")
    if not isinstance(pinv_iters, int) or pinv_iters < 0:
        raise ValueError(f"{_OP}: pinv_iters must be an integer >= 0, got {pinv_iters!r}")


def segment_means_matrix(T: int, m: int, *, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """``P [m, T]`` with ``P[i, j] = 1 / |segment i|`` for ``j`` in segment ``i`` (eq. 12): landmarks = ``P x``."""
    sizes = torch.tensor([len(s) for s in torch.arange(T).tensor_split(m)], device=device)  # (m,)
    segment = torch.repeat_interleave(torch.arange(m, device=device), sizes)  # (T,) segment of each position
    one_hot = (segment[None, :] == torch.arange(m, device=device)[:, None]).to(dtype)  # (m, T)
    return one_hot / sizes[:, None].to(dtype)


def iterative_pinv(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Eq. (16): ``Z ≈ A⁺`` for row-stochastic ``a [..., m, m]``, from ``Z₀ = Aᵀ / max column sum`` per matrix."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    z = a.transpose(-1, -2) / a.sum(dim=-2).amax(dim=-1)[..., None, None]  # ‖A‖_∞ = 1 (rows sum to one)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_landmarks: int, pinv_iters: int = 6
) -> torch.Tensor:
    """Eq. (14) with segment-means landmarks, all batch rows and heads at once (see the module doc)."""
    work = compute_dtype(q, k, v)
    q_, k_, v_ = q.to(work), k.to(work), v.to(work)
    T = q.shape[-2]
    P = segment_means_matrix(T, min(num_landmarks, T), dtype=work, device=q.device)  # (m, T)
    q_l, k_l = P @ q_, P @ k_  # (B, H, m, D) landmarks
    kernel_1 = (q_ @ k_l.transpose(-1, -2)).softmax(dim=-1)  # (B, H, T, m)
    kernel_2 = (q_l @ k_l.transpose(-1, -2)).softmax(dim=-1)  # (B, H, m, m)
    kernel_3 = (q_l @ k_.transpose(-1, -2)).softmax(dim=-1)  # (B, H, m, T)
    out = kernel_1 @ (iterative_pinv(kernel_2, pinv_iters) @ (kernel_3 @ v_))  # (B, H, T, Dv)
    return out.to(v.dtype)


def nystrom_attention_naive(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_landmarks: int, pinv_iters: int = 6
) -> torch.Tensor:
    """Test oracle: one (batch row, head) at a time, landmarks from explicit segment slices, the loop of eq. (16)."""
    work = compute_dtype(q, k, v)
    B, H, T, _ = q.shape
    m = min(num_landmarks, T)
    out = torch.empty(B, H, T, v.shape[-1], dtype=work, device=v.device)
    for b in range(B):
        for h in range(H):
            qb, kb, vb = q[b, h].to(work), k[b, h].to(work), v[b, h].to(work)
            q_l = torch.stack([s.mean(0) for s in qb.tensor_split(m)])
            k_l = torch.stack([s.mean(0) for s in kb.tensor_split(m)])
            a = torch.softmax(q_l @ k_l.T, dim=-1)
            z = a.T / torch.stack([a[:, j].sum() for j in range(m)]).max()  # ‖A‖₁ (‖A‖_∞ = 1)
            for _ in range(pinv_iters):
                az = a @ z
                eye = torch.eye(m, dtype=work, device=v.device)
                z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
            out[b, h] = torch.softmax(qb @ k_l.T, -1) @ z @ (torch.softmax(q_l @ kb.T, -1) @ vb)
    return out.to(v.dtype)


nystrom_attention = Op(
    "nystrom_attention", nystrom_attention_reference, naive=nystrom_attention_naive, check=check_nystrom_attention
)
