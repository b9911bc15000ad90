"""What ``mega`` and ``megalodon`` share: the multi-dimensional (complex) damped EMA layer and chunk-wise attention.

* :class:`DampedEMA` holds the EMA's parameters in Mega's (Ma et al. 2023, arXiv:2209.10655, §3.1) or Megalodon's
  (Ma et al. 2024, arXiv:2404.08801, §3.1, ``complex=True``) parametrisation and runs :func:`edifice.ops.damped_ema`
  on a whole sequence or, from a carried state, on the positions of a decoding step;
  its output is ``EMA(x) + ω ⊙ x`` (the authors' ``omega`` skip: ``fairseq/modules/exponential_moving_average.py``
  in facebookresearch/mega, ``megalodon/modules/complex_exponential_moving_average.py`` in XuezheMax/megalodon).
* :func:`chunk_mask` decides which keys each query sees: causal, valid (not padding) and, with a ``window``, in the
  query's chunk (Mega-chunk, §3.5 of Mega; Megalodon's chunk-wise attention), all from absolute positions, so the
  same code serves ``forward``, a prefill and a decode step against a KV cache that keeps every key.
* :func:`laplace_attention` is Mega's Laplace attention function (§3.3); softmax attention runs through
  :func:`edifice.ops.sdpa` with the same mask.

Legend: ``B`` batch, ``T``/``Tq`` new positions, ``L`` keys (cached and new), ``D`` channels, ``N`` EMA dimensions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.kv_cache import DynamicKVCache, KVCache, StaticKVCache

__all__ = ["DampedEMA", "chunk_mask", "empty_cache", "laplace_attention"]


class DampedEMA(nn.Module):
    """Multi-dimensional damped EMA over ``D`` channels with ``N`` dimensions each, plus the ``ω ⊙ x`` skip.

    Real (Mega eq. 2): ``h_t = α ⊙ β x_t + (1 - α ⊙ δ) ⊙ h_{t-1}``, ``y_t = η^T h_t / sqrt(N)``. Complex (Megalodon
    §3.1): no ``β``, the decay rotated by ``θ_{d,n} = n · 2π/N · sigmoid(θ_d)`` (the authors' "wavelets"), complex
    ``η`` and ``y_t = Re(η^T h_t) / sqrt(N)``. ``α``, ``δ`` and ``θ`` are stored as logits (sigmoid applied here),
    as in both authors' code; ``1/sqrt(N)`` is their read-out scale.
    """

    def __init__(self, dim: int, ndim: int, *, complex: bool = False) -> None:
        super().__init__()
        self.dim, self.ndim, self.complex = dim, ndim, complex
        self.alpha = nn.Parameter(torch.empty(dim, ndim))  # logit of α (input weight)
        self.delta = nn.Parameter(torch.empty(dim, ndim))  # logit of δ (damping)
        self.beta = None if complex else nn.Parameter(torch.empty(dim, ndim))
        self.theta = nn.Parameter(torch.empty(dim, 1)) if complex else None  # logit of the base phase
        self.eta = nn.Parameter(torch.empty(dim, ndim, 2) if complex else torch.empty(dim, ndim))
        self.omega = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation (Mega: ``MultiHeadEMA.reset_parameters``; Megalodon: ``_reset_parameters``)."""
        with torch.no_grad():
            nn.init.normal_(self.alpha, 0.0, 0.2)
            nn.init.normal_(self.delta, 0.0, 0.2)
            nn.init.normal_(self.eta, 0.0, 1.0)
            if self.beta is not None:  # Mega: β ≈ [1, -1, 1, -1, ...] ("seems more stable")
                signs = torch.ones(self.ndim)
                signs[1::2] = -1.0
                self.beta.normal_(0.0, 0.02).add_(signs)
                nn.init.normal_(self.omega, 0.0, 1.0)
            else:  # Megalodon: real η, base phases exp(-k log(D) / D) for k = 1..D in random order, small ω
                self.eta[..., 1].zero_()
                k = torch.randperm(self.dim).to(torch.float64) + 1.0
                freqs = torch.exp(-k * math.log(self.dim) / self.dim).clamp(1e-6, 1 - 1e-6)
                assert self.theta is not None
                self.theta.copy_(torch.log(freqs / (1.0 - freqs)).view(self.dim, 1))
                nn.init.trunc_normal_(self.omega, 0.0, 0.25, a=-1.0, b=1.0)

    def coefficients(self) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """The op's ``alpha, delta, eta`` and ``beta`` or ``theta`` in fp32 (``η`` complex when rotated)."""
        scale = self.ndim**-0.5
        alpha, delta = torch.sigmoid(self.alpha.float()), torch.sigmoid(self.delta.float())
        if not self.complex:
            assert self.beta is not None
            return alpha, delta, self.eta.float() * scale, {"beta": self.beta.float()}
        assert self.theta is not None
        wavelets = torch.arange(1, self.ndim + 1, device=alpha.device, dtype=torch.float32)  # n = 1..N
        theta = torch.sigmoid(self.theta.float()) * (2 * math.pi / self.ndim) * wavelets  # (D, N)
        eta = torch.view_as_complex(self.eta.float().contiguous()) * scale
        return alpha, delta, eta, {"theta": theta}

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> Tensor:
        """A zero EMA state ``[B, D, N]``: fp32, or complex64 for the complex EMA."""
        dtype = torch.complex64 if self.complex else torch.float32
        return torch.zeros(batch_size, self.dim, self.ndim, device=device or self.omega.device, dtype=dtype)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, state: Tensor | None = None) -> Tensor:
        """``x [B, T, D]`` -> ``EMA(x) + ω ⊙ x`` ``[B, T, D]``; padded positions feed zeros; ``state`` is updated.

        A padded position still decays the state, so padding is exact before the first and after the last token.
        """
        u = x if mask is None else x * mask[..., None].to(x.dtype)
        alpha, delta, eta, extra = self.coefficients()
        y, final = ops.damped_ema(u, alpha, delta, eta, **extra, initial_state=state)
        if state is not None:
            state.copy_(final)
        return y + (x * self.omega).to(y.dtype)


def chunk_mask(q_positions: Tensor, k_positions: Tensor, k_valid: Tensor | None, window: int | None) -> Tensor:
    """Which keys each query attends, ``[B, 1, Tq, L]`` bool: earlier or equal position, valid, same chunk.

    ``q_positions [B, Tq]``, ``k_positions [B, L]`` (absolute), ``k_valid [B, L]`` (None: all); chunk ``c`` holds
    positions ``c·window .. (c+1)·window - 1`` (Mega-chunk / Megalodon: no attention across chunk boundaries).
    """
    qp, kp = q_positions[:, :, None], k_positions[:, None, :]  # (B, Tq, 1), (B, 1, L)
    allowed = kp <= qp
    if window is not None:
        allowed = allowed & (
            torch.div(kp, window, rounding_mode="floor") == torch.div(qp, window, rounding_mode="floor")
        )
    if k_valid is not None:
        allowed = allowed & k_valid[:, None, :]
    return allowed[:, None]


def laplace_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, allowed: Tensor) -> Tensor:
    """Mega's Laplace attention (§3.3): ``f(q kᵀ / n + b)`` with ``f(x) = ½[1 + erf((x - μ) / (σ√2))]``.

    ``μ = sqrt(1/2)``, ``σ = sqrt(1/(4π))``; ``n`` is the number of keys each query attends (the authors' ``lengths``),
    masked keys get weight 0. q ``[B, H, Tq, Z]``, k ``[B, H, L, Z]``, v ``[B, H, L, E]``, ``bias``/``allowed``
    broadcast to ``[B, H, Tq, L]``; computed in fp32 (fp64 for fp64 inputs), returned in v's dtype.
    """
    work = torch.promote_types(q.dtype, torch.float32)
    n = allowed.sum(-1, keepdim=True).clamp(min=1).to(work)  # (B, 1, Tq, 1)
    scores = torch.matmul(q.to(work), k.to(work).transpose(-1, -2)) / n + bias.to(work)
    mu, sigma = math.sqrt(0.5), math.sqrt(0.25 / math.pi)
    weights = 0.5 * (1.0 + torch.erf((scores - mu) / (sigma * math.sqrt(2.0))))
    weights = weights * allowed.to(weights.dtype)
    return torch.matmul(weights, v.to(work)).to(v.dtype)


def empty_cache(
    batch_size: int,
    n_heads: int,
    head_dim: int,
    v_head_dim: int,
    *,
    max_len: int | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> KVCache:
    """A KV cache that keeps every key (static with ``max_len``): chunks are decided by :func:`chunk_mask`."""
    kwargs = {"v_head_dim": v_head_dim, "device": device, "dtype": dtype}
    if max_len is None:
        return DynamicKVCache.empty(batch_size, n_heads, head_dim, **kwargs)  # type: ignore[arg-type]
    return StaticKVCache.empty(batch_size, n_heads, head_dim, max_len, **kwargs)  # type: ignore[arg-type]
