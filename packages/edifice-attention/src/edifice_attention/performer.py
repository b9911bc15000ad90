"""Performer: softmax attention approximated by FAVOR+, positive orthogonal random features, in linear time.

Paper: Choromanski, Likhosherstov, Dohan, Song, Gane, Sarlos, Hawkins, Davis, Mohiuddin, Kaiser, Belanger, Colwell &
Weller (2021), "Rethinking Attention with Performers", ICLR 2021, https://arxiv.org/abs/2009.14794.

Implemented, per head with head size ``D`` and ``m`` random features ``w_1..w_m``:

* eq. (7) / Lemma 1, the positive random features of the softmax kernel ``SM(x, y) = exp(xᵀy)``:
  ``φ(x) = exp(-‖x‖²/2) / √m · (exp(w_1ᵀx), .., exp(w_mᵀx))``, applied to ``x = q / D^{1/4}`` and ``k / D^{1/4}`` so
  ``E[φ(q)ᵀφ(k)] = exp(qᵀk / √D)`` (:func:`favor_features`). Each row is computed with a stabilising shift: for
  queries the row's own maximum, for keys (bidirectional) the maximum over the sequence -- both cancel in the
  normalisation below. The causal form shifts nothing (a shift over keys would read the future).
* §2.4, orthogonal random features: ``W`` is stacked from ``⌈m/D⌉`` independent ``D × D`` orthogonal blocks (QR of a
  Gaussian matrix), each row rescaled to the norm of an independent ``N(0, I_D)`` draw so its marginal is Gaussian
  (:func:`orthogonal_gaussian`; ``orthogonal=False`` gives i.i.d. Gaussian rows). The features are a persistent
  buffer; :meth:`FavorAttention.redraw_features` draws new ones (§4.2, "feature redrawing";
  ``feature_redraw_interval`` does it every N training calls).
* eq. (3)-(4), bidirectional FAVOR+: ``Att↔(Q, K, V) = D̂⁻¹ (Q' ((K')ᵀ V))``, ``D̂ = diag(Q' ((K')ᵀ 1_T))``, with
  padded keys' features set to zero (so padding is exact);
* §2.6 and eq. (5), unidirectional FAVOR+ through prefix sums, the numerator and the normaliser together as the
  linear attention of ``[V, 1]`` (:func:`edifice.ops.linear_attention`, chunked, with its state for decoding: the
  ``m × (D_v + 1)`` prefix sum).

Blocks: pre-norm residual FAVOR+ attention (q/k/v/o projections) and a GELU MLP, with optional learned absolute
positions (``max_len``), on the family's :class:`~edifice_attention._linear_attention.MixerStackBackbone`.

Deviations: the authors' code adds ``ε = 1e-4`` to every feature ("numerical stabilizer"); this one does not (the
features are positive, the normaliser is bounded away from zero by the stabilising shift in the bidirectional form).
Attention dropout is not modelled.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.ffn import get_ffn
from edifice.blocks.positional import LearnedPositionalEmbedding
from edifice.config import ArchConfig
from edifice.dtypes import compute_dtype
from edifice.outputs import model_output
from edifice_attention._linear_attention import MixerStackBackbone
from edifice_attention.configs.performer import PerformerConfig

__all__ = ["FavorAttention", "FavorState", "Performer", "favor_features", "orthogonal_gaussian"]


@model_output
class FavorState:
    """Decoding state of causal FAVOR+: the prefix sums ``Σ_j φ(k_j) [v_j, 1]ᵀ``."""

    kv: Tensor
    """``[B, H, m, D_v + 1]`` (fp32): the numerator's and (last column) the normaliser's prefix sums."""


def orthogonal_gaussian(
    m: int,
    d: int,
    *,
    orthogonal: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``[m, d]`` random features (§2.4): stacked orthogonal ``d × d`` blocks, chi-distributed row norms; or i.i.d."""
    gaussian = torch.randn(m, d, generator=generator, dtype=torch.float64)
    if not orthogonal:
        return gaussian.to(dtype)
    blocks = torch.randn(math.ceil(m / d), d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(blocks)  # (n, d, d), one independent orthogonal block each
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar (QR alone biases the columns' signs)
    rows: Tensor = q.transpose(-1, -2).reshape(-1, d)[:m]  # (m, d): each block's rows orthonormal
    scaled: Tensor = (rows * gaussian.norm(dim=-1, keepdim=True)).to(dtype)  # each row as long as a Gaussian vector
    return scaled


def favor_features(x: Tensor, w: Tensor, *, shift: str) -> Tensor:
    """Eq. (7): ``exp(wᵀx - ‖x‖²/2 - c) / √m`` for ``x [..., T, D]`` (already scaled), ``w [m, D]`` -> ``[..., T, m]``.

    ``shift`` picks the constant ``c``: ``"row"`` each row's maximum of ``wᵀx`` (queries), ``"all"`` the maximum over
    the sequence (keys, bidirectional), ``"none"`` zero (causal keys). Computed in fp32 (fp64 for fp64).
    """
    work = compute_dtype(x)
    x, w = x.to(work), w.to(work)
    proj = x @ w.T  # (..., T, m)
    if shift == "row":
        proj = proj - proj.amax(dim=-1, keepdim=True).detach()
    elif shift == "all":
        proj = proj - proj.amax(dim=(-2, -1), keepdim=True).detach()
    return torch.exp(proj - x.square().sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])


class FavorAttention(nn.Module):
    """Multi-head FAVOR+ attention, bidirectional or causal (the sequence-mixer protocol)."""

    features: Tensor
    calls: Tensor

    def __init__(self, config: PerformerConfig) -> None:
        super().__init__()
        c = config
        self.n_heads = c.n_heads
        self.head_dim = c.d_model // c.n_heads
        self.num_features = c.features
        self.orthogonal = c.orthogonal
        self.causal = c.causal
        self.redraw_interval = c.feature_redraw_interval
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.k_proj = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.v_proj = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.o_proj = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.register_buffer("features", torch.empty(self.num_features, self.head_dim))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long), persistent=False)
        self.redraw_features()

    def reset_parameters(self) -> None:
        """PyTorch's default linear initialisation and a fresh draw of the random features."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            proj.reset_parameters()
        self.redraw_features()

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Draw new random features ``W [m, D]`` (§4.2), in place."""
        if self.features.is_meta:
            return
        w = orthogonal_gaussian(self.num_features, self.head_dim, orthogonal=self.orthogonal, generator=generator)
        self.features.copy_(w.to(self.features.device, self.features.dtype))

    def init_state(
        self, batch_size: int, *, max_len: int | None = None, device: Any = None, dtype: Any = None
    ) -> FavorState:
        """Zero prefix sums (causal only)."""
        if not self.causal:
            raise TypeError("FavorAttention: the bidirectional Performer has no decoding state (set causal=True)")
        work = torch.float64 if dtype == torch.float64 else torch.float32  # prefix sums in fp32 (fp64 models: fp64)
        kv = torch.zeros(batch_size, self.n_heads, self.num_features, self.head_dim + 1, device=device, dtype=work)
        return FavorState(kv=kv)

    def _heads(self, proj: nn.Linear, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        heads: Tensor = proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        return heads

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: FavorState | None = None
    ) -> Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``; ``mask [B, T]`` (True = valid) removes padded keys."""
        if self.training and self.redraw_interval is not None:
            self.calls += 1
            if int(self.calls) % self.redraw_interval == 0:
                self.redraw_features()
        B, T, _ = x.shape
        quarter = self.head_dim**-0.25
        q = self._heads(self.q_proj, x).transpose(1, 2) * quarter  # (B, H, T, D)
        k = self._heads(self.k_proj, x).transpose(1, 2) * quarter
        v = self._heads(self.v_proj, x).transpose(1, 2)
        w = self.features
        qf = favor_features(q, w, shift="row")  # (B, H, T, m)
        kf = favor_features(k, w, shift="none" if self.causal else "all")
        if mask is not None:
            kf = kf * mask[:, None, :, None].to(kf.dtype)  # padded keys contribute nothing
        v1 = torch.cat([v.to(kf.dtype), torch.ones_like(v[..., :1], dtype=kf.dtype)], dim=-1)  # (B, H, T, D+1): [V, 1]
        if self.causal:  # eq. (5): prefix sums, numerator and normaliser in one linear attention
            initial = None if state is None else state.kv
            out, final = ops.linear_attention(
                qf.transpose(1, 2), kf.transpose(1, 2), v1.transpose(1, 2), scale=1.0, initial_state=initial
            )
            out = out.transpose(1, 2)  # (B, H, T, D+1)
            if state is not None:
                state.kv.copy_(final)
        else:  # eqs. (3)-(4): Q' ((K')ᵀ [V, 1])
            if state is not None:
                raise TypeError("FavorAttention: the bidirectional Performer has no decoding state")
            out = qf @ (kf.transpose(-1, -2) @ v1)  # (B, H, T, D+1)
        y = out[..., :-1] / out[..., -1:].clamp_min(torch.finfo(out.dtype).tiny)
        merged = y.to(x.dtype).transpose(1, 2).reshape(B, T, -1)
        result: Tensor = self.o_proj(merged)
        return result


class Performer(MixerStackBackbone):
    """Performer backbone: optional learned positions, pre-norm blocks of :class:`FavorAttention` and an MLP."""

    config_class: ClassVar[type[ArchConfig]] = PerformerConfig
    config: PerformerConfig

    def __init__(self, config: PerformerConfig) -> None:
        super().__init__(config)
        self.position_embedding = (
            LearnedPositionalEmbedding(config.max_len, config.d_model) if config.max_len is not None else None
        )
        self.reset_parameters()

    def build_mixer(self, index: int) -> nn.Module:
        """FAVOR+ attention (every layer draws its own features)."""
        return FavorAttention(self.config)

    def build_ffn(self) -> nn.Module:
        """The Transformer's GELU MLP (gated kinds as configured)."""
        c = self.config
        return get_ffn(c.ffn, c.d_model, c.ffn_hidden, **({"activation": "gelu"} if c.ffn == "mlp" else {}))

    def embed_positions(self, h: Tensor, positions: Tensor | None) -> Tensor:
        """Add the learned position of each token (padding: its index among the valid tokens; pads get row 0)."""
        if self.position_embedding is None:
            return h
        if positions is None:
            positions = torch.arange(h.shape[1], device=h.device)
        out: Tensor = h + self.position_embedding(positions.clamp_min(0))
        return out

    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Redraw every layer's random features (§4.2)."""
        for module in self.modules():
            if isinstance(module, FavorAttention):
                module.redraw_features(generator)
