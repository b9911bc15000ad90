"""RWKV-7 "Goose": token-shift time-mix around the generalized delta rule, and a squared-ReLU channel-mix.

Paper: Peng et al. (2025), "RWKV-7 "Goose" with Expressive Dynamic State Evolution", https://arxiv.org/abs/2503.14456.
Where the paper is silent (initialisation, LoRA widths, GroupNorm epsilon) this follows the authors' training code,
BlinkDL/RWKV-LM ``RWKV-v7/train_temp/src/model.py`` (``RWKV_Tmix_x070``, ``RWKV_CMix_x070``, ``generate_init_weight``).

Implemented (the paper's §4, "Time Mixing" and "Channel Mixing"; per head of size ``N``, state
``S ∈ R^{N×N}`` stored key-major, ``S = wkvᵀ``):

* token shift with a learned lerp per channel: ``x^□_t = x_t + (x_{t-1} - x_t) ⊙ μ_□`` for
  ``□ ∈ {r, w, k, v, a, g}`` (the decoding state keeps ``x_{t-1}``);
* receptance, key, value ``r = x^r W_r``, ``k = x^k W_k``, ``v = x^v W_v``;
* the decay (as the released kernels compute it): ``d = w_0 + tanh(x^w W_w1) W_w2``,
  ``w_t = exp(-e^{-0.5} σ(d))`` ∈ (e^{-e^{-0.5}}, 1), passed to the op as the log-decay ``-e^{-0.5} σ(d)``;
* the value residual: layer 0 keeps its ``v`` as ``v_first``; later layers use
  ``v = lerp(v, v_first, σ(v_0 + x^v W_v1 W_v2))``;
* the in-context learning rate ``a = σ(a_0 + x^a W_a1 W_a2)``, the removal key
  ``κ̂ = normalize_head(k ⊙ ξ)`` (``ξ`` = ``k_k``) and the replacement key ``k̃ = k ⊙ (1 + (a - 1) ⊙ α)``
  (``α`` = ``k_a``);
* the state update ``wkv_t = wkv_{t-1}(diag(w_t) - κ̂_tᵀ(a_t ⊙ κ̂_t)) + v_tᵀ k̃_t``, read ``o_t = wkv_t r_t``:
  :func:`edifice.ops.generalized_delta_rule` with ``a = -κ̂``, ``b = κ̂ ⊙ a``, scale 1 (chunked WY form for whole
  sequences, the recurrent form for one position);
* the output: ``p = GroupNorm_h(o) + ((r ⊙ k̃ ⊙ ρ).sum_h) v`` (the bonus, ``ρ`` = ``r_k``), gated by
  ``g = σ(x^g W_g1) W_g2`` and projected: ``W_o (p ⊙ g)``;
* the channel-mix: ``k = x + (x_{t-1} - x) ⊙ μ_k``, ``W_v ReLU(W_k k)²``;
* the block: ``x = LN_0(x)`` before layer 0, ``x += TimeMix(LN_1(x))``, ``x += ChannelMix(LN_2(x))``, final LayerNorm.

Initialisation is the authors' (layer-dependent token-shift mixes, decay/learning-rate/value-residual biases with
the "zigzag" and "linear" patterns, zero LoRA down-projections and orthogonal up-projections at gain 0.1, orthogonal
W_r, W_v, channel-mix W_k, W_k at gain 0.1, zero W_o and channel-mix W_v, GroupNorm gain ((l + 1) / L)^0.7,
embedding U(-1e-4, 1e-4), orthogonal LM head at gain 0.5·sqrt(vocab / d)).

Deviations: with one layer the authors' depth ratio ``l / (L - 1)`` is undefined; it is taken as 0. Training-only
details of the released code are left out (the L2-warp loss term, bf16 CUDA kernels). The residual stream between
layers carries ``v_first`` beside the hidden state (``[B, T, d + d]``), so the shared backbone's layer loop, gradient
checkpointing and ``step`` work unchanged; the last layer returns the hidden state alone.

Padding: pads are fed as zero input (the token shift then sees what it sees before the first token) and the state
update at a pad is the identity (``k̃ = κ̂ = 0`` from the zero input, log-decay set to 0), so a left- or right-padded
sequence gives exactly the unpadded result at its valid positions. :func:`from_fla` converts fla's
``RWKV7ForCausalLM``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice.outputs import model_output
from edifice_attention.configs.rwkv import RWKV7Config

__all__ = ["RWKV7", "LowRank", "RWKV7Block", "RWKV7ChannelMix", "RWKV7State", "RWKV7TimeMix", "from_fla"]

#: ``e^{-0.5}``: the decay is ``exp(-e^{-0.5} σ(d))`` (the released kernels' ``W_SCALE``).
DECAY_SCALE = math.exp(-0.5)
#: The six token-shift mixes of the time-mix, in the paper's order.
MIXES = ("r", "w", "k", "v", "a", "g")


@model_output
class RWKV7State:
    """Decoding state of one RWKV-7 layer: two token-shift inputs and the wkv state, constant in size."""

    time_shift: Tensor
    """The time-mix input at the last position ``[B, d_model]`` (``x_{t-1}`` of the next step)."""
    channel_shift: Tensor
    """The channel-mix input at the last position ``[B, d_model]``."""
    wkv: Tensor
    """The matrix state ``[B, n_heads, head_dim, head_dim]`` in fp32 (key-major: ``wkvᵀ``)."""


class LowRank(nn.Module):
    """``act(x A) B (+ b)``: the paper's low-rank "LoRA" MLPs with a rank-``rank`` bottleneck."""

    def __init__(self, d_in: int, rank: int, d_out: int, activation: str | None, bias: bool) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.activation: nn.Module = {"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), None: nn.Identity()}[activation]
        self.up = nn.Linear(rank, d_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., d_in]`` -> ``[..., d_out]``."""
        out: Tensor = self.up(self.activation(self.down(x)))
        return out

    def reset_parameters(self, bias: Tensor | None = None) -> None:
        """Zero ``A``, orthogonal ``B`` at gain 0.1 (×sqrt(rank / d_out) when wider), bias ``bias`` (authors')."""
        nn.init.zeros_(self.down.weight)
        out_dim, rank = self.up.weight.shape
        nn.init.orthogonal_(self.up.weight, gain=0.1 * (math.sqrt(rank / out_dim) if rank > out_dim else 1.0))
        if self.up.bias is not None:
            with torch.no_grad():
                self.up.bias.copy_(bias if bias is not None else torch.zeros_like(self.up.bias))


def token_shift(x: Tensor, last: Tensor | None) -> Tensor:
    """``x_{t-1}`` for every position of ``x [B, T, C]``: ``last [B, C]`` (zeros when None) before the first."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if last is None else last[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], 1)


def _channel_patterns(d_model: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The authors' per-channel init patterns: ``ddd = n / C``, ``linear = n / (C - 1) - 0.5`` and ``zigzag``."""
    n = torch.arange(d_model, dtype=torch.float32)
    ddd = n / d_model
    linear = n / max(d_model - 1, 1) - 0.5
    centre = max(head_dim - 1, 1) / 2
    zigzag = ((n % head_dim) - centre) / centre
    return ddd, linear, zigzag * zigzag.abs()


class RWKV7TimeMix(nn.Module):
    """RWKV-7's time-mix (module doc): ``[B, T, d_model]`` -> ``[B, T, d_model]``, passing ``v_first`` on."""

    def __init__(self, config: RWKV7Config, index: int) -> None:
        super().__init__()
        c = config
        C, self.n_heads, self.head_dim = c.d_model, c.n_heads, c.head_dim
        self.index, self.n_layers, self.chunk_size, self.group_eps = index, c.n_layers, c.chunk_size, c.group_eps
        ranks = c.ranks
        self.mix = nn.ParameterDict({name: nn.Parameter(torch.zeros(C)) for name in MIXES})  # μ_□: token-shift lerps
        self.r_proj, self.k_proj, self.v_proj = (nn.Linear(C, C, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(C, C, bias=False)
        self.w_lora = LowRank(C, ranks["w"], C, "tanh", bias=True)  # d = w_0 + tanh(x W_w1) W_w2
        self.a_lora = LowRank(C, ranks["a"], C, None, bias=True)  # a = σ(a_0 + x W_a1 W_a2)
        self.v_lora = LowRank(C, ranks["v"], C, None, bias=True) if index > 0 else None  # value residual
        self.g_lora = LowRank(C, ranks["g"], C, "sigmoid", bias=False)  # g = σ(x W_g1) W_g2
        self.k_k = nn.Parameter(torch.zeros(C))  # ξ, the removal key's per-channel scale
        self.k_a = nn.Parameter(torch.zeros(C))  # α, how much a scales the replacement key
        self.r_k = nn.Parameter(torch.zeros(self.n_heads, self.head_dim))  # ρ, the bonus's weights
        self.norm_weight = nn.Parameter(torch.ones(C))  # GroupNorm over heads, one gain and bias per channel
        self.norm_bias = nn.Parameter(torch.zeros(C))

    def reset_parameters(self) -> None:
        """The authors' initialisation (``RWKV_Tmix_x070.__init__`` and ``generate_init_weight``)."""
        C, L, layer = self.o_proj.weight.shape[0], self.n_layers, self.index
        ratio_0_to_1 = layer / (L - 1) if L > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - layer / L
        ddd, linear, zigzag = _channel_patterns(C, self.head_dim)
        powers = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}
        n = torch.arange(C, dtype=torch.float32)
        decay_bias = -6 + 6 * (n / max(C - 1, 1)) ** (1 + ratio_0_to_1**0.3) + 0.5 + zigzag * 2.5
        with torch.no_grad():
            for name, power in powers.items():
                self.mix[name].copy_(1.0 - ddd.pow(power * ratio_1_to_almost0))
            self.k_k.copy_(0.71 - linear * 0.1)
            self.k_a.fill_(1.02)
            self.r_k.fill_(-0.04)
            self.norm_weight.fill_(((layer + 1) / L) ** 0.7)
            self.norm_bias.zero_()
        self.w_lora.reset_parameters(decay_bias)
        self.a_lora.reset_parameters(-0.19 + zigzag * 0.3 + linear * 0.4)
        if self.v_lora is not None:
            self.v_lora.reset_parameters(0.73 - linear * 0.4)
        self.g_lora.reset_parameters()
        for proj, gain in ((self.r_proj, 1.0), (self.k_proj, 0.1), (self.v_proj, 1.0)):
            nn.init.orthogonal_(proj.weight, gain=gain)
        nn.init.zeros_(self.o_proj.weight)

    def forward(
        self, x: Tensor, v_first: Tensor | None, valid: Tensor | None, state: RWKV7State | None
    ) -> tuple[Tensor, Tensor]:
        """``x [B, T, d]`` (already normed), layer 0's values (None in layer 0), ``valid [B, T, 1]`` -> (y, v_first)."""
        B, T, C = x.shape
        H, N = self.n_heads, self.head_dim
        if valid is not None:
            x = x * valid
        shifted = token_shift(x, None if state is None else state.time_shift)
        if state is not None:
            state.time_shift.copy_(x[:, -1])
        delta = shifted - x
        xr, xw, xk, xv, xa, xg = (x + delta * self.mix[name] for name in MIXES)
        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)
        log_w = -DECAY_SCALE * torch.sigmoid(self.w_lora(xw).float())  # log of w = exp(-e^{-0.5} σ(d))
        if self.v_lora is None:
            v_first = v
        else:
            assert v_first is not None, "RWKV-7 layers after the first need layer 0's values"
            v = torch.lerp(v, v_first, torch.sigmoid(self.v_lora(xv)))
        a = torch.sigmoid(self.a_lora(xa))  # in-context learning rate
        g = self.g_lora(xg)
        kappa = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1)  # κ̂, the removal key
        k = k * (1 + (a - 1) * self.k_a)  # k̃, the replacement key
        if valid is not None:
            log_w = log_w * valid  # a pad decays nothing (k̃ = κ̂ = 0 there already: the input is zero)
        heads = (r.view(B, T, H, N), k.view(B, T, H, N), v.view(B, T, H, N))
        o, final = ops.generalized_delta_rule(
            *heads,
            -kappa,
            kappa * a.view(B, T, H, N),
            log_w.view(B, T, H, N),
            scale=1.0,
            initial_state=None if state is None else state.wkv,
            chunk_size=self.chunk_size,
        )
        if state is not None:
            state.wkv.copy_(final)
        y = F.group_norm(o.reshape(B * T, C), H, self.norm_weight, self.norm_bias, self.group_eps).view(B, T, C)
        bonus = (heads[0] * heads[1] * self.r_k).sum(-1, keepdim=True) * heads[2]  # (r ⊙ k̃ ⊙ ρ)·v per head
        out: Tensor = self.o_proj((y + bonus.reshape(B, T, C)) * g)
        return out, v_first


class RWKV7ChannelMix(nn.Module):
    """RWKV-7's channel-mix : token-shifted input, ``W_v ReLU(W_k k)²``."""

    def __init__(self, config: RWKV7Config, index: int) -> None:
        super().__init__()
        self.index, self.n_layers = index, config.n_layers
        self.mix_k = nn.Parameter(torch.zeros(config.d_model))
        self.key = nn.Linear(config.d_model, config.ffn_hidden, bias=False)
        self.value = nn.Linear(config.ffn_hidden, config.d_model, bias=False)

    def reset_parameters(self) -> None:
        """The authors' initialisation: ``μ_k = 1 - (n / C)^{(1 - l/L)^4}``, orthogonal ``W_k``, zero ``W_v``."""
        ddd, _, _ = _channel_patterns(self.mix_k.shape[0], 1)
        with torch.no_grad():
            self.mix_k.copy_(1.0 - ddd.pow((1.0 - self.index / self.n_layers) ** 4))
        nn.init.orthogonal_(self.key.weight)
        nn.init.zeros_(self.value.weight)

    def forward(self, x: Tensor, valid: Tensor | None, state: RWKV7State | None) -> Tensor:
        """``x [B, T, d]`` (already normed), ``valid [B, T, 1]`` -> ``[B, T, d]``."""
        if valid is not None:
            x = x * valid
        shifted = token_shift(x, None if state is None else state.channel_shift)
        if state is not None:
            state.channel_shift.copy_(x[:, -1])
        k = x + (shifted - x) * self.mix_k
        out: Tensor = self.value(torch.relu(self.key(k)).square())
        return out


class RWKV7Block(nn.Module):
    """One RWKV-7 layer: ``LN_0`` (layer 0 only), time-mix and channel-mix residual branches (module doc)."""

    def __init__(self, config: RWKV7Config, index: int) -> None:
        super().__init__()
        C, eps = config.d_model, config.norm_eps
        self.index, self.last = index, index == config.n_layers - 1
        self.d_model, self.n_heads, self.head_dim = C, config.n_heads, config.head_dim
        self.pre_norm = nn.LayerNorm(C, eps=eps) if index == 0 else None
        self.time_norm, self.channel_norm = nn.LayerNorm(C, eps=eps), nn.LayerNorm(C, eps=eps)
        self.time_mix = RWKV7TimeMix(config, index)
        self.channel_mix = RWKV7ChannelMix(config, index)
        self.dropout = nn.Dropout(config.dropout)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RWKV7State:
        """Zero token-shift inputs (in ``dtype``) and a zero fp32 wkv state; constant size, ``max_len`` unused."""
        device = self.time_mix.o_proj.weight.device if device is None else device
        dtype = self.time_mix.o_proj.weight.dtype if dtype is None else dtype
        wkv = torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=torch.float32)
        return RWKV7State(
            time_shift=torch.zeros(batch_size, self.d_model, device=device, dtype=dtype),
            channel_shift=torch.zeros(batch_size, self.d_model, device=device, dtype=dtype),
            wkv=wkv,
        )

    def forward(
        self,
        h: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: RWKV7State | None = None,
    ) -> Tensor:
        """``h [B, T, d]`` (layer 0) or ``[B, T, 2d]`` (hidden state and ``v_first``) -> the same for the next layer."""
        v_first: Tensor | None = None
        if self.pre_norm is not None:
            h = self.pre_norm(h)
        else:
            h, v_first = h[..., : self.d_model], h[..., self.d_model :]
        valid = None if mask is None else mask.to(h.dtype)[..., None]
        y, v_first = self.time_mix(self.time_norm(h), v_first, valid, state)
        h = h + self.dropout(y)
        h = h + self.dropout(self.channel_mix(self.channel_norm(h), valid, state))
        return h if self.last else torch.cat([h, v_first.to(h.dtype)], -1)


class RWKV7(SequenceBackbone):
    """RWKV-7 sequence backbone: RWKV-7 layers and a final LayerNorm (module doc)."""

    config_class: ClassVar[type[ArchConfig]] = RWKV7Config
    config: RWKV7Config

    def __init__(self, config: RWKV7Config) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """RWKV-7 layer ``index``."""
        return RWKV7Block(self.config, index)

    def build_norm(self) -> nn.Module:
        """The final LayerNorm (``ln_out``)."""
        return nn.LayerNorm(self.config.d_model, eps=self.config.norm_eps)

    def blocks(self) -> list[RWKV7Block]:
        """Every layer, in order."""
        return [cast(RWKV7Block, layer) for layer in self.layers]

    def reset_parameters(self) -> None:
        """Each layer's own initialisation, then the authors' embedding (U(±1e-4)) and LM head (orthogonal)."""
        super().reset_parameters()
        if self.embed_tokens is not None:
            nn.init.uniform_(self.embed_tokens.weight, -1e-4, 1e-4)
        if self.lm_head is not None and not self.config.tie_embeddings:
            vocab, d = self.lm_head.weight.shape
            nn.init.orthogonal_(self.lm_head.weight, gain=0.5 * math.sqrt(vocab / d) if vocab > d else 0.5)


# -- flash-linear-attention checkpoints -----------------------------------------------------------------------------
_FLA_ROOT = {
    "model.embeddings.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "model.norm.bias": "norm.bias",
    "lm_head.weight": "lm_head.weight",
}
_FLA_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_FLA_BLOCK = {"pre_norm.": "pre_norm.", "attn_norm.": "time_norm.", "ffn_norm.": "channel_norm."}
_FLA_ATTN = {
    **{f"x_{name}": f"mix.{name}" for name in MIXES},
    "k_k": "k_k",
    "k_a": "k_a",
    "r_k": "r_k",
    "r_proj.weight": "r_proj.weight",
    "k_proj.weight": "k_proj.weight",
    "v_proj.weight": "v_proj.weight",
    "o_proj.weight": "o_proj.weight",
    "g_norm.weight": "norm_weight",
    "g_norm.bias": "norm_bias",
}
_FLA_LORA = re.compile(r"^([wavg])_lora\.lora\.([02])\.(weight|bias)$")
_FLA_FFN = {"x_k": "mix_k", "key.weight": "key.weight", "value.weight": "value.weight"}


def _map_fla_layer(index: str, leaf: str, value: Tensor) -> tuple[str, Tensor]:
    """One fla ``model.layers.<i>.<leaf>`` entry under this module's name (token-shift mixes flattened to ``[C]``)."""
    prefix = f"layers.{index}."
    for old, new in _FLA_BLOCK.items():
        if leaf.startswith(old):
            return prefix + new + leaf.removeprefix(old), value
    if leaf.startswith("attn."):
        name = leaf.removeprefix("attn.")
        if name in _FLA_ATTN:
            target = _FLA_ATTN[name]
            return prefix + "time_mix." + target, value.reshape(-1) if target.startswith("mix.") else value
        lora = _FLA_LORA.match(name)
        if lora is not None:
            which, part, kind = lora.groups()
            return f"{prefix}time_mix.{which}_lora.{'down' if part == '0' else 'up'}.{kind}", value
    if leaf.startswith("ffn.") and leaf.removeprefix("ffn.") in _FLA_FFN:
        return prefix + "channel_mix." + _FLA_FFN[leaf.removeprefix("ffn.")], value
    raise CheckpointError(f"RWKV-7 converter: unexpected key 'model.layers.{index}.{leaf}'")


def map_fla_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename fla's ``RWKV7ForCausalLM`` state dict to this module's keys; unknown keys raise."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key in _FLA_ROOT:
            out[_FLA_ROOT[key]] = value
            continue
        match = _FLA_LAYER.match(key)
        if match is None:
            raise CheckpointError(f"RWKV-7 converter: unexpected key {key!r}")
        name, tensor = _map_fla_layer(match.group(1), match.group(2), value)
        out[name] = tensor
    return out


def _fla_get(config: Any, name: str, default: Any = None) -> Any:
    """Field ``name`` of an fla config object or ``config.json`` dict."""
    return config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)


def from_fla(source: Any, **overrides: Any) -> RWKV7:
    """Convert flash-linear-attention's ``RWKV7ForCausalLM`` (a model or ``(config, state_dict)``) to ``rwkv``."""
    if isinstance(source, tuple) and len(source) == 2:
        hf, state_dict = source
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf, state_dict = source.config, source.state_dict()
    else:
        raise TypeError(f"RWKV-7 converter: source must be an fla model or (config, state_dict), got {type(source)!r}")
    d_model = _fla_get(hf, "hidden_size")
    value_dims = _fla_get(hf, "value_dim") or [d_model]
    unsupported = {
        "hidden_act": _fla_get(hf, "hidden_act") not in (None, "sqrelu"),
        "norm_first": _fla_get(hf, "norm_first") is False,
        "norm_bias": _fla_get(hf, "norm_bias") is False,
        "attn": _fla_get(hf, "attn") is not None,
        "value_dim": any(v != d_model for v in ([value_dims] if isinstance(value_dims, int) else value_dims)),
    }
    for name, bad in unsupported.items():
        if bad:
            raise CheckpointError(f"RWKV-7 converter: {name}={_fla_get(hf, name)!r} is not supported by this model")
    head_dim = _fla_get(hf, "head_dim") or d_model // _fla_get(hf, "num_heads")
    d_ff = _fla_get(hf, "intermediate_size")
    if d_ff is None:  # fla's RWKV7FeedForward: hidden_ratio·d rounded up to a multiple of 32
        d_ff = 32 * -(-int(d_model * (_fla_get(hf, "hidden_ratio") or 4)) // 32)
    eps = float(_fla_get(hf, "norm_eps", 1e-5))
    fields = {
        "d_model": d_model,
        "n_layers": _fla_get(hf, "num_hidden_layers"),
        "head_dim": head_dim,
        "decay_low_rank_dim": _fla_get(hf, "decay_low_rank_dim"),
        "a_low_rank_dim": _fla_get(hf, "a_low_rank_dim"),
        "v_low_rank_dim": _fla_get(hf, "v_low_rank_dim"),
        "gate_low_rank_dim": _fla_get(hf, "gate_low_rank_dim"),
        "d_ff": d_ff,
        "vocab_size": _fla_get(hf, "vocab_size"),
        "norm_eps": eps,
        "group_norm_eps": head_dim * eps,  # fla's GroupNorm epsilon is head_dim·norm_eps
        "tie_embeddings": bool(_fla_get(hf, "tie_word_embeddings", False)),
    }
    config = RWKV7Config(**{**fields, **overrides})
    weights = map_fla_state_dict(state_dict)
    if config.tie_embeddings:
        weights["lm_head.weight"] = weights["embed_tokens.weight"]
    with torch.device("meta"):
        model = RWKV7(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"rwkv converter: the mapped weights do not fit: {exc}") from None
    model.tie_weights()
    return model
