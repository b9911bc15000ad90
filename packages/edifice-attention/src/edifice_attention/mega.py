"""Mega: moving-average equipped gated attention, as a causal sequence model (decoder / language model).

Ma, Zhou, Kong, He, Gui, Neubig, May & Zettlemoyer (2023), "Mega: Moving Average Equipped Gated Attention", ICLR 2023,
https://arxiv.org/abs/2209.10655. One layer (§3.2-3.4, Fig. 2) is a Mega sublayer and a normalized feed-forward
network (NFFN), each with its residual; ``X`` is the (pre-normalised) layer input ``[B, T, d]``:

* eq. (2)-(4): ``X' = EMA(X)``, the multi-dimensional damped EMA (each channel expanded to ``ema_dim`` dimensions
  with ``β``, input weight ``α``, damping ``δ``, read-out ``η``), computed by :func:`edifice.ops.damped_ema` in its
  convolution form (eq. 4's kernel, FFT) for a sequence and from the carried state for ``step``; as in the authors'
  code the sublayer uses ``SiLU(EMA(X) + ω ⊙ X)`` (:class:`~edifice_attention._ema_attention.DampedEMA`);
* eq. (6)-(8): ``Z = SiLU(X' W_z + b_z)`` (``z_dim``), ``Q = κ_q ⊙ Z + μ_q``, ``K = κ_k ⊙ Z + μ_k``;
* eq. (9): ``V = SiLU(X W_v + b_v)`` (``v_dim``);
* eq. (10): ``O = f(Q Kᵀ / τ(X) + b_rel) V``, single head, causal; ``f`` = softmax with ``τ = sqrt(z)``, or
  ``laplace_attention`` (§3.3: ``f(x) = ½[1 + erf((x - μ)/(σ√2))]`` with ``τ`` = the number of keys attended);
  ``b_rel`` is a learned bias per relative distance (distances ``>= seq_len`` share the last);
* eq. (11)-(12): reset gate ``γ = SiLU(X' W_γ + b_γ)`` (``v_dim``), update gate ``φ = σ(X' W_φ + b_φ)``;
* eq. (13): ``Ĥ = SiLU(X' W_h + (γ ⊙ O) U_h + b_h)``;
* eq. (14): ``Y = φ ⊙ Ĥ + (1 - φ) ⊙ X`` (``X`` before the pre-norm, as the authors' ``addcmul(residual, u, h -
  residual)``); the projections ``W_z, W_γ, W_φ, W_h`` are one ``mx_proj`` as in the authors' code;
* §3.4 NFFN: ``Y + W_2 SiLU(W_1 Norm(Y))``; pre-norm by default (``prenorm=False``: norm after each residual);
* §3.5 Mega-chunk: with ``window_size`` the attention stays within chunks of that many positions (the EMA, which
  carries information across chunks, does not).

Decoding: a layer's state is the EMA state ``[B, d, ema_dim]`` and a KV cache of ``Q``/``K``'s keys and values; a
step's keys are masked to its chunk by position, so every prefix reproduces ``forward``. Padding feeds zeros to the
EMA and masks keys; it is exact for left and right padding.

Deviations: the authors' relative bias also has entries for future keys (unused in a decoder, not built) and their
Mega-chunk decoder drops the cache at chunk boundaries (ours keeps the keys and masks them: same outputs, the cache
grows with ``t``); the Rotary relative bias option, scale-norm, adaptive softmax, EMA truncation and the bidirectional
(encoder) EMA are not built; dropout applies to ``X'``, ``Ĥ`` and the NFFN output (no separate attention/hidden
dropout rates).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.kv_cache import KVCache
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_attention._ema_attention import DampedEMA, chunk_mask, empty_cache, laplace_attention
from edifice_attention.configs.mega import MegaConfig

__all__ = ["Mega", "MegaLayer", "MegaLayerState", "MovingAverageGatedAttention"]


@model_output
class MegaLayerState:
    """Decoding state of one Mega layer: the EMA state (constant size) and the attention's KV cache."""

    ema: Tensor
    """Damped EMA state ``[B, d_model, ema_dim]`` in fp32."""
    cache: KVCache
    """Keys ``[B, 1, L, z_dim]`` and values ``[B, 1, L, v_dim]`` of every position so far, with their positions."""


class MovingAverageGatedAttention(nn.Module):
    """The Mega sublayer (eq. 2-14): damped EMA, shared ``Z``, single-head gated attention, update-gated residual."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__()
        c = config
        d, z, e = c.d_model, c.z_width, c.v_width
        self.d_model, self.z_dim, self.v_dim = d, z, e
        self.laplace = c.laplace_attention
        self.window = c.window_size
        self.prenorm = c.prenorm
        self.norm = get_norm(c.norm, d, eps=c.norm_eps)
        self.ema = DampedEMA(d, c.ema_dim)
        self.v_proj = nn.Linear(d, e)  # eq. (9)
        self.mx_proj = nn.Linear(d, d + z + e + d)  # [W_φ | W_z | W_γ | W_h] of eq. (6), (11), (12), (13)
        self.h_proj = nn.Linear(e, d)  # U_h (its bias is b_h)
        self.qk_scale = nn.Parameter(torch.empty(2, z))  # κ_q, κ_k
        self.qk_offset = nn.Parameter(torch.empty(2, z))  # μ_q, μ_k
        self.rel_bias = nn.Parameter(torch.empty(c.seq_len if c.window_size is None else min(c.seq_len, c.window_size)))
        self.dropout = nn.Dropout(c.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: N(0, 0.02) weights and κ, zero biases and μ, N(0, 0.02) relative biases."""
        for lin in (self.v_proj, self.mx_proj, self.h_proj):
            nn.init.normal_(lin.weight, 0.0, 0.02)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.qk_scale, 0.0, 0.02)
        nn.init.zeros_(self.qk_offset)
        nn.init.normal_(self.rel_bias, 0.0, 0.02)
        self.ema.reset_parameters()
        self.norm.reset_parameters()  # type: ignore[operator]

    def relative_bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """``b_rel`` of eq. (10) by distance ``q - k`` (clamped to the table), ``[B, 1, Tq, L]`` fp32."""
        dist = (q_positions[:, :, None] - k_positions[:, None, :]).clamp(0, self.rel_bias.shape[0] - 1)
        return self.rel_bias[dist][:, None]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, allowed: Tensor) -> Tensor:
        """Eq. (10): ``f(Q Kᵀ / τ + b_rel) V`` over the allowed keys; q ``[B, 1, Tq, z]`` -> ``[B, 1, Tq, v]``."""
        if self.laplace:
            return laplace_attention(q, k, v, bias, allowed)
        float_mask = bias.masked_fill(~allowed, float("-inf"))
        return ops.sdpa(q, k, v, attn_mask=float_mask, scale=self.z_dim**-0.5)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MegaLayerState | None = None,
    ) -> Tensor:
        """``x [B, T, d]`` -> ``Y [B, T, d]`` (eq. 14); ``state`` (EMA state and KV cache) is updated in place."""
        B, T, _ = x.shape
        residual = x
        if self.prenorm:
            x = self.norm(x)
        v = F.silu(self.v_proj(x))  # eq. (9), (B, T, e)
        mx = self.dropout(F.silu(self.ema(x, mask=mask, state=None if state is None else state.ema)))  # X', eq. (5)
        base: Tensor = self.mx_proj(mx)
        gate, zr, hx = torch.split(base, [self.d_model, self.z_dim + self.v_dim, self.d_model], dim=-1)
        phi = torch.sigmoid(gate)  # update gate, eq. (12)
        z, r = torch.split(F.silu(zr), [self.z_dim, self.v_dim], dim=-1)  # Z (eq. 6) and reset gate γ (eq. 11)
        qk = z.unsqueeze(2) * self.qk_scale + self.qk_offset  # eq. (7)-(8), (B, T, 2, z)
        v = v[:, None]  # (B, 1, T, e)
        q, k = qk[:, None, :, 0].to(v.dtype), qk[:, None, :, 1].to(v.dtype)  # (B, 1, T, z); one dtype under autocast
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        if state is None:
            k_positions, k_valid = positions, mask
        else:
            k, v, k_positions, valid = state.cache.update_and_fetch(k, v, positions, mask)
            k_valid = valid[:, 0, 0]
        allowed = chunk_mask(positions, k_positions, k_valid, self.window)  # (B, 1, T, L)
        o = self.attend(q, k, v, self.relative_bias(positions, k_positions), allowed)[:, 0]  # (B, T, e)
        h = F.silu(hx + self.h_proj(o.to(r.dtype) * r))  # eq. (13)
        y = torch.addcmul(residual, phi, self.dropout(h) - residual)  # eq. (14)
        return y if self.prenorm else self.norm(y)


class NormalizedFeedForward(nn.Module):
    """Mega's NFFN (§3.4): ``X + W_2 SiLU(W_1 Norm(X) + b_1) + b_2`` (pre-norm; post-norm: ``Norm`` of the sum)."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__()
        self.prenorm = config.prenorm
        self.norm = get_norm(config.norm, config.d_model, eps=config.norm_eps)
        self.fc1 = nn.Linear(config.d_model, config.ffn_hidden)
        self.fc2 = nn.Linear(config.ffn_hidden, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) weights, zero biases (the authors' init)."""
        for lin in (self.fc1, self.fc2):
            nn.init.normal_(lin.weight, 0.0, 0.02)
            nn.init.zeros_(lin.bias)
        self.norm.reset_parameters()  # type: ignore[operator]

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, d] -> [B, T, d]``."""
        h = self.norm(x) if self.prenorm else x
        y = x + self.dropout(self.fc2(self.dropout(F.silu(self.fc1(h)))))
        return y if self.prenorm else self.norm(y)  # type: ignore[no-any-return]


class MegaLayer(nn.Module):
    """One Mega layer: :class:`MovingAverageGatedAttention`, then the NFFN (none when ``d_ff=0``)."""

    def __init__(self, config: MegaConfig) -> None:
        super().__init__()
        self.mixer = MovingAverageGatedAttention(config)
        self.ffn = NormalizedFeedForward(config) if config.ffn_hidden > 0 else None

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MegaLayerState | None = None,
    ) -> Tensor:
        """``[B, T, d] -> [B, T, d]``; ``state`` is updated in place."""
        y = self.mixer(x, mask=mask, positions=positions, state=state)
        return y if self.ffn is None else self.ffn(y)  # type: ignore[no-any-return]

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MegaLayerState:
        """A zero EMA state and an empty KV cache (static with ``max_len``)."""
        m = self.mixer
        device = m.v_proj.weight.device if device is None else device
        dtype = m.v_proj.weight.dtype if dtype is None else dtype
        cache = empty_cache(batch_size, 1, m.z_dim, m.v_dim, max_len=max_len, device=device, dtype=dtype)
        return MegaLayerState(ema=m.ema.init_state(batch_size, device=device), cache=cache)


class Mega(SequenceBackbone):
    """Mega backbone: token embedding (scaled by sqrt(d)), ``n_layers`` Mega layers, a final norm when pre-norm."""

    config_class: ClassVar[type[ArchConfig]] = MegaConfig
    config: MegaConfig

    def __init__(self, config: MegaConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index``: a Mega sublayer and its NFFN."""
        return MegaLayer(self.config)

    def build_norm(self) -> nn.Module:
        """The final norm of a pre-norm stack (none for post-norm, whose layers end normalised)."""
        c = self.config
        return get_norm(c.norm, c.d_model, eps=c.norm_eps) if c.prenorm else nn.Identity()

    def reset_parameters(self) -> None:
        """Embeddings N(0, d^-1/2) (the authors' LM), input/head projections N(0, 0.02), layers their own init."""
        d = self.config.d_model
        if self.embed_tokens is not None:
            nn.init.normal_(self.embed_tokens.weight, 0.0, d**-0.5)
        for lin in (self.input_proj, self.lm_head):
            if isinstance(lin, nn.Linear):
                nn.init.normal_(lin.weight, 0.0, 0.02 if lin is self.input_proj else d**-0.5)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        for layer in self.layers:
            assert isinstance(layer, MegaLayer)
            layer.mixer.reset_parameters()
            if layer.ffn is not None:
                layer.ffn.reset_parameters()
        reset = getattr(self.norm, "reset_parameters", None)
        if callable(reset):
            reset()
        self.tie_weights()

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """Token embeddings times ``sqrt(d_model)`` when ``scale_embeddings`` (Mega's LM), else the base embedding."""
        h = super().embed_inputs(inputs)
        if self.embed_tokens is not None and self.config.scale_embeddings:
            h = h * self.config.d_model**0.5
        return h
