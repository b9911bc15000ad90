"""Multi-head latent attention (MLA) in the decoder_only stack, and a converter from DeepSeek-V3 checkpoints.

DeepSeek-AI (2024), "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model",
https://arxiv.org/abs/2405.04434, §2.1. Keys and values are decompressed from one low-rank latent per token, which
is all the KV cache keeps, and RoPE is carried by a decoupled query part and a key shared by every head:

* eq. (9)-(11): ``c_KV = RMSNorm(W^DKV h)``, ``k^C = W^UK c_KV``, ``v^C = W^UV c_KV`` (W^UK and W^UV are the two
  halves of ``kv_b_proj``; the RMSNorm on the latent is the released models', see below);
* eq. (12)-(13): ``c_Q = RMSNorm(W^DQ h)``, ``q^C = W^UQ c_Q`` (``q_lora_rank``; ``None`` projects ``q`` directly,
  as DeepSeek-V2-Lite does);
* eq. (14)-(16): ``q^R = RoPE(W^QR c_Q)`` per head, ``k^R = RoPE(W^KR h)`` shared by all heads,
  ``q = [q^C; q^R]``, ``k = [k^C; k^R]``;
* eq. (17)-(18): ``o_i = Σ_j softmax_j(q_i·k_j / sqrt(d_h + d_h^R)) v^C_j``, ``u = W^O [o_1 .. o_n]`` through
  :func:`edifice.ops.sdpa`.

The cache stores ``c_KV`` and ``k^R`` -- ``(d_c + d_h^R)`` numbers per token and layer, against ``2 n_kv_heads d_h``
for grouped-query attention -- in a :class:`~edifice.blocks.kv_cache.StaticKVCache` (or dynamic one) whose "keys"
are the latent ``[B, 1, L, d_c]`` and "values" the RoPE key ``[B, 1, L, d_h^R]``; expanded keys are never cached.
``forward`` decompresses keys and values (eqs. 10-11). ``step`` decodes in the *absorbed* form the paper describes
below eq. (11) (``absorb=True``): ``q^C_i·k^C_j = (W^UK_i^T q^C_i)·c_KV_j`` and ``W^O`` absorbs ``W^UV``, so
attention runs as multi-query attention over ``[c_KV; k^R]`` with value ``c_KV`` and the per-head output is mapped by
``W^UV`` afterwards; ``absorb=False`` decompresses the cached latent instead. Both equal ``forward``.

Deviations and choices: the RMSNorms on ``c_Q`` and ``c_KV`` and the RoPE layout follow the released DeepSeek code
(transformers' ``DeepseekV3Attention``), where the paper is silent; RoPE here rotates in the rotate-half layout, and
the converter permutes DeepSeek's interleaved RoPE rows (``rope_interleave``) so the same model results. YaRN with
DeepSeek's ``mscale_all_dim`` multiplies the softmax scale by ``mscale²`` as the released code does. DeepSeek's MoE
(sigmoid scores, group-limited top-k with a bias correction, routed scaling) is not edifice core's
:class:`~edifice.blocks.moe.MoEFeedForward` (softmax top-k), so the converter accepts dense layers only
(``first_k_dense_replace >= num_hidden_layers``); ``n_experts`` gives the Mixtral-style MoE of decoder_only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import edifice
from edifice import ops
from edifice.blocks.kv_cache import DynamicKVCache, KVCache, StaticKVCache
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RopeScaling, RotaryEmbedding, apply_rotary
from edifice.config import ArchConfig
from edifice.errors import CheckpointError, ConfigError
from edifice_attention._hf_convert import deinterleave_rows, load_converted, rename_state_dict
from edifice_attention.configs.mla import MLAConfig
from edifice_attention.convert import _get, _rope_fields, _unpack
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["MLA", "MultiHeadLatentAttention", "from_deepseek_v3", "map_deepseek_state_dict", "mla_config"]


class MultiHeadLatentAttention(nn.Module):
    """MLA self-attention over ``x [B, T, d_model]`` (see module doc); the decoding state caches the latent."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        q_lora_rank: int | None = None,
        rope: RotaryEmbedding | None = None,
        bias: bool = False,
        norm_eps: float = 1e-6,
        scale: float | None = None,
        dropout: float = 0.0,
        absorb: bool = True,
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads = d_model, n_heads
        self.kv_lora_rank, self.v_head_dim = kv_lora_rank, v_head_dim
        self.nope, self.rope_dim = qk_nope_head_dim, qk_rope_head_dim
        qk = qk_nope_head_dim + qk_rope_head_dim
        self.scale = qk**-0.5 if scale is None else scale
        self.dropout, self.absorb = dropout, absorb
        if q_lora_rank is None:
            self.q_proj: nn.Linear | None = nn.Linear(d_model, n_heads * qk, bias=False)
            self.q_a_proj = self.q_norm = self.q_b_proj = None
        else:
            self.q_proj = None
            self.q_a_proj = nn.Linear(d_model, q_lora_rank, bias=bias)  # W^DQ
            self.q_norm = get_norm("rmsnorm", q_lora_rank, eps=norm_eps)
            self.q_b_proj = nn.Linear(q_lora_rank, n_heads * qk, bias=False)  # [W^UQ; W^QR] per head
        self.kv_a_proj = nn.Linear(d_model, kv_lora_rank + qk_rope_head_dim, bias=bias)  # [W^DKV; W^KR]
        self.kv_norm = get_norm("rmsnorm", kv_lora_rank, eps=norm_eps)
        self.kv_b_proj = nn.Linear(kv_lora_rank, n_heads * (qk_nope_head_dim + v_head_dim), bias=False)  # W^UK, W^UV
        self.o_proj = nn.Linear(n_heads * v_head_dim, d_model, bias=bias)
        self.rope = rope if rope is not None else RotaryEmbedding(qk_rope_head_dim)
        if self.rope.head_dim != qk_rope_head_dim:
            raise ValueError(f"MLA: rope.head_dim={self.rope.head_dim} must equal qk_rope_head_dim={qk_rope_head_dim}")

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation of every projection and unit RMSNorm gains."""
        for module in self.children():
            reset = getattr(module, "reset_parameters", None)
            if reset is not None:
                reset()

    def _queries(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(q^C [B, H, T, d_h], q^R [B, H, T, d_h^R])`` before RoPE (eqs. 12-14)."""
        B, T, _ = x.shape
        if self.q_proj is not None:
            q = self.q_proj(x)
        else:
            assert self.q_a_proj is not None and self.q_norm is not None and self.q_b_proj is not None
            q = self.q_b_proj(self.q_norm(self.q_a_proj(x)))
        q = q.view(B, T, self.n_heads, -1).transpose(1, 2)
        return q[..., : self.nope], q[..., self.nope :]

    def _latents(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(c_KV [B, 1, T, d_c], k^R [B, 1, T, d_h^R])`` before RoPE (eqs. 9, 15)."""
        c, k_rope = self.kv_a_proj(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        return self.kv_norm(c).unsqueeze(1), k_rope.unsqueeze(1)

    def _up_weights(self) -> tuple[Tensor, Tensor]:
        """``W^UK [H, d_h, d_c]`` and ``W^UV [H, d_v, d_c]``, the two halves of ``kv_b_proj`` per head."""
        w = self.kv_b_proj.weight.view(self.n_heads, self.nope + self.v_head_dim, self.kv_lora_rank)
        return w[:, : self.nope], w[:, self.nope :]

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
    ) -> Tensor:
        """Attend ``x [B, T, d_model]`` causally to itself and the cached latents in ``state``; ``[B, T, d_model]``."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"MLA: x expected [B, T, {self.d_model}], got {list(x.shape)}")
        B, T, _ = x.shape
        if state is not None and positions is None:
            raise ValueError("MLA: positions are required with a latent cache state (the absolute index of x)")
        q_nope, q_rope = self._queries(x)
        c, k_rope = self._latents(x)
        cos, sin = self.rope(positions if positions is not None else torch.arange(T, device=x.device))
        q_rope, k_rope = apply_rotary(q_rope, cos, sin), apply_rotary(k_rope, cos, sin)
        masking: dict[str, Any] = {"causal": True, "q_positions": positions, "k_positions": positions}
        if state is not None:
            # The cache holds the latent c_KV as its "keys" and the shared RoPE key k^R as its "values".
            c, k_rope, k_positions, attn_mask = state.update_and_fetch(c, k_rope, positions, mask)  # type: ignore[arg-type]
            masking.update(k_positions=k_positions, attn_mask=attn_mask)
        elif mask is not None:
            masking["attn_mask"] = mask[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        w_uk, w_uv = self._up_weights()
        if state is not None and self.absorb:
            # Absorbed: q^C·(W^UK c) = (W^UK^T q^C)·c, so attention is MQA over [c_KV; k^R] with values c_KV.
            q_latent = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)
            q = torch.cat([q_latent, q_rope], dim=-1)
            k = torch.cat([c, k_rope], dim=-1)  # (B, 1, L, d_c + d_h^R)
            out_latent = ops.sdpa(q, k, c, scale=self.scale, dropout_p=dropout, **masking)  # (B, H, T, d_c)
            out = torch.einsum("bhtc,hvc->bhtv", out_latent, w_uv)
        else:
            kv = torch.einsum("bxlc,hdc->bhld", c, self.kv_b_proj.weight.view(self.n_heads, -1, self.kv_lora_rank))
            k_nope, v = kv[..., : self.nope], kv[..., self.nope :]  # (B, H, L, d_h) and (B, H, L, d_v)
            k = torch.cat([k_nope, k_rope.expand(-1, self.n_heads, -1, -1)], dim=-1)
            q = torch.cat([q_nope, q_rope], dim=-1)
            out = ops.sdpa(q, k, v, scale=self.scale, dropout_p=dropout, **masking)  # (B, H, T, d_v)
        y: Tensor = self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim))
        return y

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty latent cache: ``c_KV [B, 1, L, d_c]`` as keys and ``k^R [B, 1, L, d_h^R]`` as values."""
        weight = self.kv_a_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        sizes = {"v_head_dim": self.rope_dim, "device": device, "dtype": dtype}
        if max_len is None:
            return DynamicKVCache.empty(batch_size, 1, self.kv_lora_rank, **sizes)  # type: ignore[arg-type]
        return StaticKVCache.empty(batch_size, 1, self.kv_lora_rank, max_len, **sizes)  # type: ignore[arg-type]

    def cache_numbers_per_token(self) -> int:
        """Numbers cached per token by this layer: ``d_c + d_h^R``."""
        return self.kv_lora_rank + self.rope_dim

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, kv_lora_rank={self.kv_lora_rank}, qk_nope={self.nope}, "
            f"qk_rope={self.rope_dim}, v_head_dim={self.v_head_dim}, absorb={self.absorb}"
        )


class MLA(DecoderOnly):
    """The decoder_only stack with :class:`MultiHeadLatentAttention` mixers (DeepSeek-V2/V3 dense layers)."""

    config_class: ClassVar[type[ArchConfig]] = MLAConfig
    config: MLAConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s mixer: multi-head latent attention (decoder_only supplies the block and FFN)."""
        c = self.config
        scaling = RopeScaling.parse(c.rope_scaling)
        scale = c.qk_head_dim**-0.5
        if scaling.kind == "yarn" and scaling.mscale_all_dim and scaling.factor > 1:
            # DeepSeek's YaRN: the softmax scale grows by mscale(s, mscale_all_dim)^2 (released code).
            scale *= (0.1 * scaling.mscale_all_dim * math.log(scaling.factor) + 1.0) ** 2
        return MultiHeadLatentAttention(
            c.d_model,
            c.n_heads,
            kv_lora_rank=c.kv_lora_rank,
            qk_nope_head_dim=c.qk_nope_head_dim,
            qk_rope_head_dim=c.qk_rope_head_dim,
            v_head_dim=c.v_head_dim,
            q_lora_rank=c.q_lora_rank,
            rope=self.build_rope(c.qk_rope_head_dim),
            bias=c.attention_bias,
            norm_eps=c.norm_eps,
            scale=scale,
            dropout=c.attention_dropout,
            absorb=c.absorb,
        )

    def cache_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """Bytes the decoding state keeps per token over all layers: ``n_layers (d_c + d_h^R)`` numbers."""
        dtype = next(self.parameters()).dtype if dtype is None else dtype
        size = torch.empty((), dtype=dtype).element_size()
        mixers = [m for m in self.modules() if isinstance(m, MultiHeadLatentAttention)]
        return sum(m.cache_numbers_per_token() for m in mixers) * size


# -- converter from transformers' DeepSeek-V3 ---------------------------------------------------------------------
_LAYER_KEYS = {
    "self_attn.q_proj": "mixer.q_proj",
    "self_attn.q_a_proj": "mixer.q_a_proj",
    "self_attn.q_a_layernorm": "mixer.q_norm",
    "self_attn.q_b_proj": "mixer.q_b_proj",
    "self_attn.kv_a_proj_with_mqa": "mixer.kv_a_proj",
    "self_attn.kv_a_layernorm": "mixer.kv_norm",
    "self_attn.kv_b_proj": "mixer.kv_b_proj",
    "self_attn.o_proj": "mixer.o_proj",
    "input_layernorm": "mixer_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn.gate_proj",
    "mlp.up_proj": "ffn.up_proj",
    "mlp.down_proj": "ffn.down_proj",
}


def mla_config(hf: Any, **overrides: Any) -> MLAConfig:
    """The :class:`MLAConfig` of a DeepSeek-V3 (or V2) transformers config (object or ``config.json`` dict)."""
    if _get(hf, "hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"DeepSeek config: hidden_act={_get(hf, 'hidden_act')!r} is not supported (SwiGLU 'silu')")
    n_layers = _get(hf, "num_hidden_layers")
    dense = _get(hf, "first_k_dense_replace", 0) or 0
    if _get(hf, "n_routed_experts") and dense < n_layers:
        raise CheckpointError(
            f"DeepSeek converter: layers {dense}..{n_layers - 1} are DeepSeek MoE layers (sigmoid, group-limited "
            "routing), which edifice core's MoE block does not implement; only all-dense checkpoints convert "
            "(first_k_dense_replace >= num_hidden_layers)"
        )
    rope = _rope_fields(hf, _get(hf, "qk_rope_head_dim"))
    rope.pop("rotary_dim", None)
    fields: dict[str, Any] = {
        "vocab_size": _get(hf, "vocab_size"),
        "d_model": _get(hf, "hidden_size"),
        "n_layers": n_layers,
        "n_heads": _get(hf, "num_attention_heads"),
        "d_ff": _get(hf, "intermediate_size"),
        "q_lora_rank": _get(hf, "q_lora_rank"),
        "kv_lora_rank": _get(hf, "kv_lora_rank"),
        "qk_nope_head_dim": _get(hf, "qk_nope_head_dim"),
        "qk_rope_head_dim": _get(hf, "qk_rope_head_dim"),
        "v_head_dim": _get(hf, "v_head_dim"),
        "ffn": "swiglu",
        "norm": "rmsnorm",
        "norm_eps": float(_get(hf, "rms_norm_eps", 1e-6)),
        "attention_bias": bool(_get(hf, "attention_bias", False)),
        "attention_dropout": float(_get(hf, "attention_dropout", 0.0) or 0.0),
        "tie_embeddings": bool(_get(hf, "tie_word_embeddings", False)),
        "init_std": float(_get(hf, "initializer_range", 0.02)),
        **rope,
    }
    return edifice.config("mla", **{**fields, **overrides})  # type: ignore[return-value]


def map_deepseek_state_dict(
    state_dict: Mapping[str, Tensor], config: MLAConfig, *, rope_interleave: bool = True
) -> dict[str, Tensor]:
    """Rename a DeepSeek-V3 state dict to :class:`MLA`'s keys; interleaved RoPE rows become rotate-half ones."""
    qk, rope, rank = config.qk_head_dim, config.qk_rope_head_dim, config.kv_lora_rank

    def transform(module: str, value: Tensor) -> Tensor:
        if rope_interleave and module in ("self_attn.q_proj", "self_attn.q_b_proj"):
            return deinterleave_rows(value, config.qk_nope_head_dim, rope, qk)  # q^R rows of every head
        if rope_interleave and module == "self_attn.kv_a_proj_with_mqa":
            return deinterleave_rows(value, rank, rope, rank + rope)  # the k^R rows after c_KV's
        return value

    return rename_state_dict(state_dict, _LAYER_KEYS, config, who="DeepSeek", transform=transform)


def from_deepseek_v3(source: Any, **overrides: Any) -> MLA:
    """Convert a transformers ``DeepseekV3ForCausalLM``/``DeepseekV3Model`` (or ``(config, state_dict)``) to ``mla``.

    Only dense checkpoints convert (see the module doc); keyword arguments override config fields.
    """
    hf_config, state_dict = _unpack(source)
    config = mla_config(hf_config, **overrides)
    interleave = _get(hf_config, "rope_interleave", True)
    weights = map_deepseek_state_dict(state_dict, config, rope_interleave=bool(interleave))
    return load_converted(MLA, config, weights, who="DeepSeek")
