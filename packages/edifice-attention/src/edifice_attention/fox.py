"""Forgetting Transformer (FoX): softmax attention with a data-dependent forget gate.

Lin et al. (2025), "Forgetting Transformer: Softmax Attention with a Forget Gate", ICLR 2025,
https://arxiv.org/abs/2503.02130. Implemented:

* eq. (4): a scalar forget gate per head and time step, ``f_t = σ(w_h^T x_t + b_h)`` (``f_proj``, one output per
  query head, with bias), kept in log space, ``log f_t = logsigmoid(w_h^T x_t + b_h)`` in fp32;
* eq. (5)-(6): ``o_i = sum_j F_ij exp(q_i^T k_j / sqrt(d)) v_j / sum_j F_ij exp(q_i^T k_j / sqrt(d))`` with
  ``F_ij = prod_{l=j+1..i} f_l``, i.e. ``softmax(Q K^T / sqrt(d) + D) V`` with ``D_ij = c_i - c_j``, ``c_i = sum_{l<=i}
  log f_l``, causal, computed by :func:`edifice.ops.variant_attention` (``q_log_gates``/``k_log_gates``);
* no positional embedding (§3: FoX "does not need" RoPE; ``positional="rope"`` is available), Llama-style blocks
  otherwise (``decoder_only``: SwiGLU, pre-RMSNorm); the "Pro" block's output gate is ``output_gate`` (the G1 gate of
  :class:`~edifice_attention._attention_variants.VariantAttention`, as fla's ``use_output_gate``).

Decoding: each cache slot stores its ``log f`` per query head beside its value (the value heads carry ``G =
n_heads / n_kv_heads`` extra channels), so any KV cache keeps the gates in the slots of their keys; a step
takes the cumulative sum over the slots (after writing its own) for its keys' ``c_j`` and steps back from the last one
for its queries' ``c_i`` (so a CUDA-graph warm-up that wrote a slot and rewound the cache leaves nothing stale). Padded
positions have ``log f = 0`` (no decay), so padding is exact. With GQA the gates stay per query head (fla's layout).

Deviations: the "Pro" block's KV-shift and the paper's data-dependent forget-gate bias initialisation options are
not built; the gate bias starts at 0 (fla's default init). A cache in bf16 rounds the stored ``log f`` to bf16.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice import ops
from edifice.blocks.kv_cache import DynamicKVCache, KVCache, StaticKVCache
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice_attention._attention_variants import VariantAttention
from edifice_attention.configs.fox import FoxConfig
from edifice_attention.convert import _get, _unpack
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["ForgettingAttention", "Fox", "from_fla", "map_fla_state_dict"]


class ForgettingAttention(VariantAttention):
    """Causal softmax attention with per-head forget gates ``f_t = σ(w^T x_t + b)`` (eq. 4-6), GQA, KV cache."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.f_proj = nn.Linear(self.d_model, self.n_heads, bias=True)

    def reset_parameters(self) -> None:
        """Linear defaults (the architecture sets N(0, init_std) weights and zero biases, as fla)."""
        super().reset_parameters()
        if hasattr(self, "f_proj"):
            self.f_proj.reset_parameters()

    def log_forget_gates(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Eq. (4) in log space: ``logsigmoid(x W_f + b_f)`` ``[B, Hq, T]`` in fp32, 0 at padded positions."""
        log_f = F.logsigmoid(self.f_proj(x).float())  # (B, T, Hq)
        if mask is not None:
            log_f = log_f.masked_fill(~mask.unsqueeze(-1), 0.0)
        return log_f.transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
    ) -> Tensor:
        """Attend ``x [B, T, d_model]`` with the forget-gate bias; ``state`` (a KV cache) is updated in place."""
        q, k, v = self._qkv(x, mask=mask, positions=positions, state=state)
        log_f = self.log_forget_gates(x, mask)  # (B, Hq, T)
        B, Hq, T = log_f.shape
        Hk, D = self.n_kv_heads, v.shape[-1]
        G = Hq // Hk
        if state is None:
            k, v, masking = self._fetch(k, v, mask=mask, positions=positions, state=None)
            q_gates = k_gates = log_f.cumsum(-1)  # c_i = sum_{l<=i} log f_l
        else:
            packed = torch.cat([v, log_f.view(B, Hk, G, T).transpose(2, 3).to(v.dtype)], dim=-1)  # (B, Hk, T, D+G)
            k, packed, masking = self._fetch(k, packed, mask=mask, positions=positions, state=state)
            v, gates = packed[..., :D], packed[..., D:]  # (B, Hk, L, D), (B, Hk, L, G)
            # Slots are in position order and unwritten ones hold 0, so the cumulative sum over the slots is c_j,
            # and its last entry is c at this call's last position; the queries' c_i step back from there.
            k_gates = gates.float().transpose(2, 3).reshape(B, Hq, -1).cumsum(-1)  # (B, Hq, L)
            after = log_f.sum(-1, keepdim=True) - log_f.cumsum(-1)  # sum_{l > i} log f_l within this call
            q_gates = k_gates[..., -1:] - after
        out = ops.variant_attention(q, k, v, q_log_gates=q_gates, k_log_gates=k_gates, scale=self.scale, **masking)
        return self.finish(out, x)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KV cache whose value slots also hold the ``G`` query heads' ``log f`` (static with ``max_len``)."""
        weight = self.k_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        G = self.n_heads // self.n_kv_heads
        dims = {"v_head_dim": self.head_dim + G, "device": device, "dtype": dtype}
        if max_len is None:
            return DynamicKVCache.empty(batch_size, self.n_kv_heads, self.head_dim, **dims)  # type: ignore[arg-type]
        return StaticKVCache.empty(batch_size, self.n_kv_heads, self.head_dim, max_len, **dims)  # type: ignore[arg-type]


class Fox(DecoderOnly):
    """The ``decoder_only`` stack with :class:`ForgettingAttention` mixers (no RoPE by default)."""

    config_class: ClassVar[type[ArchConfig]] = FoxConfig
    config: FoxConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s forgetting attention (with the output gate when ``output_gate``)."""
        return ForgettingAttention(**self.attention_kwargs(), output_gate=self.config.output_gate)


# -- converter from flash-linear-attention's ForgettingTransformerForCausalLM -------------------------------------
_KEYS = {
    "embeddings": "embed_tokens",
    "attn_norm": "mixer_norm",
    "mlp_norm": "ffn_norm",
    "attn": "mixer",
    "mlp": "ffn",
}
_KEY = re.compile(r"^(?:model\.)?(?:(layers\.\d+)\.)?(\w+)\.(.+)$")


def fox_config(hf: Any, **overrides: Any) -> FoxConfig:
    """The :class:`FoxConfig` of an fla ``ForgettingTransformerConfig`` (object or dict)."""
    if _get(hf, "qk_norm", False):
        raise CheckpointError("fla converter: qk_norm=True is not supported (fla's per-channel GroupNorm gains)")
    if _get(hf, "attnres_block_size") is not None:
        raise CheckpointError("fla converter: attention residuals (attnres_block_size) are not supported")
    if _get(hf, "hidden_act", "swish") not in ("swish", "silu"):
        raise CheckpointError(f"fla converter: hidden_act={_get(hf, 'hidden_act')!r} is not supported (SwiGLU only)")
    d_model = _get(hf, "hidden_size")
    d_ff = _get(hf, "intermediate_size")
    if d_ff is None:  # fla's GatedMLP: 2/3 * hidden_ratio * d_model, rounded up to a multiple of 256
        d_ff = 256 * ((int(d_model * (_get(hf, "hidden_ratio") or 4) * 2 / 3) + 255) // 256)
    fields = {
        "vocab_size": _get(hf, "vocab_size"),
        "d_model": d_model,
        "n_layers": _get(hf, "num_hidden_layers"),
        "n_heads": _get(hf, "num_heads"),
        "n_kv_heads": _get(hf, "num_kv_heads"),
        "d_ff": d_ff,
        "ffn": "swiglu",
        "norm_eps": float(_get(hf, "norm_eps", 1e-6)),
        "positional": "none",
        "attention_bias": bool(_get(hf, "qkv_bias", False)),
        "window": _get(hf, "window_size"),
        "output_gate": bool(_get(hf, "use_output_gate", False)),
        "tie_embeddings": bool(_get(hf, "tie_word_embeddings", False)),
        "init_std": float(_get(hf, "initializer_range", 0.02)),
    }
    return edifice.config("fox", **{**fields, **overrides})  # type: ignore[return-value]


def map_fla_state_dict(state_dict: Mapping[str, Tensor], config: FoxConfig) -> dict[str, Tensor]:
    """Rename an fla ``ForgettingTransformerForCausalLM`` state dict to :class:`Fox`'s keys (unknown keys raise)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        match = _KEY.match(key)
        if match is None or (match.group(2) not in _KEYS and match.group(2) not in ("norm", "lm_head")):
            unknown.append(key)
            continue
        layer, module, rest = match.groups()
        name = _KEYS.get(module, module)
        out[f"{layer}.{name}.{rest}" if layer else f"{name}.{rest}"] = value.detach().clone()
    if unknown:
        raise CheckpointError(f"fla converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    if config.attention_bias:  # fla's o_proj has no bias; ours follows attention_bias
        for i in range(config.n_layers):
            out.setdefault(f"layers.{i}.mixer.o_proj.bias", torch.zeros(config.d_model))
    if config.tie_embeddings:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def from_fla(source: Any, **overrides: Any) -> Fox:
    """Convert an fla ``ForgettingTransformerForCausalLM`` (or ``(config, state_dict)``) to ``fox``."""
    hf, state_dict = _unpack(source)
    config = fox_config(hf, **overrides)
    weights = map_fla_state_dict(state_dict, config)
    with torch.device("meta"):
        model = Fox(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"fla converter: the mapped weights do not fit fox: {exc}") from None
    model.tie_weights()
    return model
