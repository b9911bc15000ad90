"""Megalodon: Mega with a complex EMA, timestep normalization, normalized attention and a two-hop residual.

Ma, Yang, Xiong, Chen, Yu, Zhang, May, Zettlemoyer, Levy & Zhou (2024), "Megalodon: Efficient LLM Pretraining and
Inference with Unlimited Context Length", https://arxiv.org/abs/2404.08801. Where the paper is silent this follows
the authors' released code, github.com/XuezheMax/megalodon (``megalodon/modules/moving_average_gated_attention.py``,
``complex_exponential_moving_average.py``, ``timestep_norm.py``, ``normalized_feedforward_network.py``,
``model/mega.py``). One layer, on ``X [B, T, d]``:

* §3.2 timestep normalization: ``X̂ = TimestepNorm(X)``, a group norm whose mean and variance are cumulative over
  time, ``μ_t = mean_{s<=t} m_s``, ``σ²_t = mean_{s<=t} (v_s + m_s²) - μ_t²`` (``m_s``, ``v_s``: the group's mean
  and variance at step ``s``; the authors' Welford merge of per-step moments, equal weights per step), then
  ``(x - μ_t) / sqrt(σ²_t + ε) · (1 + w) + b``; causal, so a decoding step carries (count, mean, variance);
* §3.1 CEMA: ``h_t = α ⊙ x̂_t + (1 - α ⊙ δ) e^{iθ} ⊙ h_{t-1}``, ``y_t = Re(ηᵀ h_t)`` with ``θ_{d,n} = n θ_d``
  (:class:`~edifice_attention._ema_attention.DampedEMA`, ``complex=True``; :func:`edifice.ops.damped_ema`); the
  layer uses ``X' = RMSNorm(CEMA(X̂) + ω ⊙ X̂)``;
* §3.3 normalized attention: ``Z = X' W_z + b_z`` normalised per head by an RMSNorm without gain, ``Q = Z (1 + γ_q)
  / sqrt(d_h) + β_q``, ``K = Z (1 + γ_k) / sqrt(d_h) + β_k`` (so the scores need no further scale), RoPE on ``Q, K``
  at positions within the chunk, ``V = SiLU(X̂ W_v + b_v)``, ``O = softmax(Q Kᵀ) V`` causal within chunks of
  ``window_size`` (§3.5's chunk-wise attention), per head;
* reset gate ``R = SiLU(X' W_r + b_r)``, ``H = X' W_h1 + b_h1 + (O ⊙ R) W_h2`` and ``Y = H + X`` (no update gate,
  as the authors' code);
* §3.4 two-hop residual: the feed-forward's residual is the layer input, ``out = X + FFN(LayerNorm(Y))``, with a
  SiLU (or ``swiglu``) FFN;
* a final timestep norm ends the stack (the authors' output layer), applied by the last layer so that its cumulative
  statistics are part of the decoding state.

Decoding: a layer's state is the timestep-norm statistics, the complex EMA state ``[B, d, ema_dim]`` and a KV cache;
every prefix reproduces ``forward``. Padding: padded positions are left out of the cumulative statistics (as the
authors' kernel does with its padding mask) and of the keys, and feed zeros to the CEMA; left and right padding are
exact.

Deviations: RoPE uses the rotate-half pairing of Edifice's RoPE (the authors' is interleaved; a fixed permutation of
the query/key features, same model family); the timestep norm has no learned prior (the authors' default
``prior_count=0``); the moments are formed as ``E[x²] - E[x]²`` from cumulative sums in fp32 (fp64 for fp64 inputs)
rather than by a sequential Welford merge; chunk parallelism, the fused kernels, attention/hidden dropout rates and
embedding scaling are not built (``dropout`` applies to ``X'``, ``H`` and the FFN output).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.kv_cache import KVCache
from edifice.blocks.norms import LayerNorm, RMSNorm
from edifice.blocks.rope import RotaryEmbedding, apply_rotary
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_attention._ema_attention import DampedEMA, chunk_mask, empty_cache
from edifice_attention.configs.megalodon import MegalodonConfig

__all__ = ["Megalodon", "MegalodonAttention", "MegalodonLayer", "MegalodonLayerState", "TimestepNorm", "TimestepState"]


@model_output
class TimestepState:
    """Cumulative statistics of a timestep norm: constant size, updated in place by each step."""

    count: Tensor
    """``[B, 1]`` number of valid positions seen (fp32)."""
    mean: Tensor
    """``[B, G]`` cumulative mean per group (fp32)."""
    var: Tensor
    """``[B, G]`` cumulative (population) variance per group (fp32)."""


@model_output
class MegalodonLayerState:
    """Decoding state of one Megalodon layer."""

    norm: TimestepState
    """The layer's timestep norm statistics."""
    ema: Tensor
    """Complex EMA state ``[B, d_model, ema_dim]`` (complex64)."""
    cache: KVCache
    """Keys ``[B, H, L, z_dim / H]`` and values ``[B, H, L, v_dim / H]`` with their positions."""
    final_norm: TimestepState | None = None
    """The stack's final timestep norm statistics (the last layer only)."""


class TimestepNorm(nn.Module):
    """Timestep normalization (Megalodon §3.2): group norm with cumulative (causal) statistics over time."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.groups, self.eps = dim, groups, eps
        self.weight = nn.Parameter(torch.zeros(dim))  # the gain is 1 + weight (the authors' parametrisation)
        self.bias = nn.Parameter(torch.zeros(dim))

    def reset_parameters(self) -> None:
        """Unit gain, zero bias."""
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> TimestepState:
        """No position seen: count 0 (the prior mean 0 and variance 1 then carry no weight)."""
        device = self.weight.device if device is None else device
        zeros = torch.zeros(batch_size, self.groups, device=device)
        return TimestepState(count=torch.zeros(batch_size, 1, device=device), mean=zeros, var=torch.ones_like(zeros))

    def forward(self, x: Tensor, *, mask: Tensor | None = None, state: TimestepState | None = None) -> Tensor:
        """``x [B, T, d]`` -> normalised ``[B, T, d]`` (zeros at padded positions); ``state`` is updated in place."""
        B, T, D = x.shape
        work = torch.promote_types(x.dtype, torch.float32)
        xg = x.to(work).view(B, T, self.groups, D // self.groups)
        m = xg.mean(-1)  # (B, T, G): this step's group mean ...
        s2 = xg.pow(2).mean(-1)  # ... and second moment (v_s + m_s²)
        w = torch.ones(B, T, 1, device=x.device, dtype=work) if mask is None else mask[..., None].to(work)
        if state is None:
            c0, m0, v0 = x.new_zeros(B, 1, dtype=work), x.new_zeros(B, self.groups, dtype=work), None
        else:
            c0, m0, v0 = state.count.to(work), state.mean.to(work), state.var.to(work)
        count = c0[:, None] + w.cumsum(1)  # (B, T, 1)
        s1 = (w * m).cumsum(1) + (c0 * m0)[:, None]
        s2 = (w * s2).cumsum(1)
        if v0 is not None:
            s2 = s2 + (c0 * (v0 + m0.pow(2)))[:, None]
        seen = count > 0
        safe = torch.where(seen, count, 1.0)
        mean = torch.where(seen, s1 / safe, 0.0 if state is None else m0[:, None])
        var = torch.where(seen, (s2 / safe - mean.pow(2)).clamp(min=0.0), 1.0 if v0 is None else v0[:, None])
        y = (xg - mean[..., None]) * torch.rsqrt(var[..., None] + self.eps)
        y = y.view(B, T, D) * (1.0 + self.weight.to(work)) + self.bias.to(work)
        if mask is not None:
            y = y * mask[..., None].to(work)  # the authors' kernel writes zeros at padded positions
        if state is not None:
            state.count.copy_(count[:, -1])
            state.mean.copy_(mean[:, -1])
            state.var.copy_(var[:, -1])
        return y.to(x.dtype)


class MegalodonAttention(nn.Module):
    """Timestep norm, CEMA, normalized chunk-wise attention and the gated output (the authors' MEGA sublayer)."""

    def __init__(self, config: MegalodonConfig) -> None:
        super().__init__()
        c = config
        d, z, e, H = c.d_model, c.z_width, c.v_width, c.n_heads
        self.d_model, self.z_dim, self.v_dim, self.n_heads = d, z, e, H
        self.z_head, self.v_head = z // H, e // H
        self.window = c.window_size
        self.timenorm = TimestepNorm(d, c.norm_groups, eps=c.norm_eps)
        self.cema = DampedEMA(d, c.ema_dim, complex=True)
        self.rmsnorm = RMSNorm(d, eps=c.norm_eps)
        self.znorm = RMSNorm(self.z_head, eps=c.norm_eps, elementwise_affine=False)
        self.wv = nn.Linear(d, e)
        self.wz = nn.Linear(d, z)
        self.wr = nn.Linear(d, e)
        self.wh1 = nn.Linear(d, d)
        self.wh2 = nn.Linear(e, d, bias=False)
        self.qk_gain = nn.Parameter(torch.zeros(2, z))  # γ_q, γ_k (gain 1 + γ)
        self.qk_offset = nn.Parameter(torch.zeros(2, z))  # β_q, β_k
        self.rope = RotaryEmbedding(self.z_head, base=c.rope_base)
        self.dropout = nn.Dropout(c.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' 'he' init (kaiming normal, a = sqrt 5) with zero biases; zero γ, β; CEMA's own init."""
        for lin in (self.wv, self.wz, self.wr, self.wh1, self.wh2):
            nn.init.kaiming_normal_(lin.weight, a=math.sqrt(5.0))
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.qk_gain)
        nn.init.zeros_(self.qk_offset)
        self.cema.reset_parameters()
        self.timenorm.reset_parameters()
        self.rmsnorm.reset_parameters()

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MegalodonLayerState | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``x [B, T, d]`` -> ``(Y = H + X, X̂)``; ``state`` (norm statistics, CEMA state, cache) is updated in place."""
        B, T, _ = x.shape
        H = self.n_heads
        xn = self.timenorm(x, mask=mask, state=None if state is None else state.norm)  # X̂, §3.2
        mx = self.dropout(self.rmsnorm(self.cema(xn, mask=mask, state=None if state is None else state.ema)))  # X'
        z = self.znorm(self.wz(mx).view(B, T, H, self.z_head)).reshape(B, T, -1)  # §3.3: per-head RMS-normalised Z
        qk = z.unsqueeze(2) * ((self.qk_gain + 1.0) / math.sqrt(self.z_head)) + self.qk_offset  # (B, T, 2, z)
        q = qk[:, :, 0].view(B, T, H, self.z_head).transpose(1, 2)  # (B, H, T, z_head)
        k = qk[:, :, 1].view(B, T, H, self.z_head).transpose(1, 2)
        v = F.silu(self.wv(xn)).view(B, T, H, self.v_head).transpose(1, 2)  # (B, H, T, v_head)
        r = F.silu(self.wr(mx))  # reset gate, (B, T, e)
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        in_chunk = positions if self.window is None else torch.remainder(positions, self.window)
        cos, sin = self.rope(in_chunk.clamp(min=0))  # RoPE at the position within the chunk
        q, k = apply_rotary(q, cos, sin).to(v.dtype), apply_rotary(k, cos, sin).to(v.dtype)  # one dtype (autocast)
        if state is None:
            k_positions, k_valid = positions, mask
        else:
            k, v, k_positions, valid = state.cache.update_and_fetch(k, v, positions, mask)
            k_valid = valid[:, 0, 0]
        allowed = chunk_mask(positions, k_positions, k_valid, self.window)  # (B, 1, T, L)
        o = ops.sdpa(q, k, v, attn_mask=allowed, scale=1.0)  # (B, H, T, v_head); Q, K are already scaled
        o = o.transpose(1, 2).reshape(B, T, self.v_dim)
        h = self.wh1(mx) + self.wh2(self.dropout(o.to(r.dtype) * r))
        return self.dropout(h) + x, xn


class MegalodonLayer(nn.Module):
    """One Megalodon layer: :class:`MegalodonAttention` and the normalized FFN on the two-hop residual (§3.4)."""

    def __init__(self, config: MegalodonConfig, index: int) -> None:
        super().__init__()
        c = config
        self.mixer = MegalodonAttention(c)
        self.has_ffn = c.ffn_hidden > 0
        self.ffn_norm = LayerNorm(c.d_model, eps=c.norm_eps)
        self.fc1 = nn.Linear(c.d_model, c.ffn_hidden, bias=False) if self.has_ffn else None
        self.fc3 = nn.Linear(c.d_model, c.ffn_hidden, bias=False) if self.has_ffn and c.swiglu else None
        self.fc2 = nn.Linear(c.ffn_hidden, c.d_model, bias=False) if self.has_ffn else None
        self.layer_scale = nn.Parameter(torch.empty(c.d_model)) if c.rescale_ffn and self.has_ffn else None
        self.layer_scale_init = 0.1 * 0.5**index
        self.dropout = nn.Dropout(c.dropout)
        self.final_norm = (
            TimestepNorm(c.d_model, c.norm_groups, eps=c.norm_eps) if index == c.n_layers - 1 else None
        )  # the stack's output norm (the authors' MegaOutputLayer.final_norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The FFN's 'he' init, the layer scale's ``0.1 · 0.5^layer``, unit norms."""
        for lin in (self.fc1, self.fc2, self.fc3):
            if lin is not None:
                nn.init.kaiming_normal_(lin.weight, a=math.sqrt(5.0))
        if self.layer_scale is not None:
            nn.init.constant_(self.layer_scale, self.layer_scale_init)
        self.ffn_norm.reset_parameters()
        if self.final_norm is not None:
            self.final_norm.reset_parameters()

    def ffn(self, y: Tensor) -> Tensor:
        """``W_2 act(W_1 LayerNorm(Y))`` (SwiGLU: ``W_2 (SiLU(W_1 ·) ⊙ W_3 ·)``), layer-scaled when asked."""
        assert self.fc1 is not None and self.fc2 is not None
        h = self.ffn_norm(y)
        hidden = F.silu(self.fc1(h)) if self.fc3 is None else F.silu(self.fc1(h)) * self.fc3(h)
        out: Tensor = self.dropout(self.fc2(self.dropout(hidden)))
        return out if self.layer_scale is None else out * self.layer_scale

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MegalodonLayerState | None = None,
    ) -> Tensor:
        """``[B, T, d] -> [B, T, d]``: ``X + FFN(LayerNorm(Y))`` (two-hop residual), final-normalised if last."""
        y, _ = self.mixer(x, mask=mask, positions=positions, state=state)
        out: Tensor = x + self.ffn(y) if self.has_ffn else y
        if self.final_norm is not None:
            out = self.final_norm(out, mask=mask, state=None if state is None else state.final_norm)
        return out

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MegalodonLayerState:
        """Empty statistics, a zero CEMA state and an empty KV cache (static with ``max_len``)."""
        m = self.mixer
        device = m.wv.weight.device if device is None else device
        dtype = m.wv.weight.dtype if dtype is None else dtype
        cache = empty_cache(batch_size, m.n_heads, m.z_head, m.v_head, max_len=max_len, device=device, dtype=dtype)
        final = None if self.final_norm is None else self.final_norm.init_state(batch_size, device=device)
        return MegalodonLayerState(
            norm=m.timenorm.init_state(batch_size, device=device),
            ema=m.cema.init_state(batch_size, device=device),
            cache=cache,
            final_norm=final,
        )


class Megalodon(SequenceBackbone):
    """Megalodon backbone: embedding, ``n_layers`` Megalodon layers, the last ending with a timestep norm."""

    config_class: ClassVar[type[ArchConfig]] = MegalodonConfig
    config: MegalodonConfig

    def __init__(self, config: MegalodonConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index`` (the last one carries the stack's final timestep norm)."""
        return MegalodonLayer(self.config, index)

    def build_norm(self) -> nn.Module:
        """None here: the final norm is a timestep norm, stateful, so the last layer applies it."""
        return nn.Identity()

    def reset_parameters(self) -> None:
        """Embedding and output: truncated N(0, 1/d) at ±3σ (the authors' 'gaussian' init); layers their own."""
        std = self.config.d_model**-0.5
        for w in (self.embed_tokens, self.lm_head, self.input_proj):
            if isinstance(w, nn.Embedding | nn.Linear):
                nn.init.trunc_normal_(w.weight, 0.0, std, a=-3 * std, b=3 * std)
                if isinstance(w, nn.Linear) and w.bias is not None:
                    nn.init.zeros_(w.bias)
        for layer in self.layers:
            assert isinstance(layer, MegalodonLayer)
            layer.mixer.reset_parameters()
            layer.reset_parameters()
        self.tie_weights()
