"""RNoPE-SWA: interleaved NoPE full-attention layers and RoPE sliding-window layers, and a Cohere2 converter.

Yang, Venkitesh, Talupuru, Lin, Cairuz, Blunsom, Locatelli (Cohere, 2025), "Rope to Nope and Back Again: A New Hybrid
Attention Strategy", https://arxiv.org/abs/2501.18795, §4: a stack whose global layers attend the whole causal
context with *no* position encoding (NoPE, which the paper finds retrieves best at long range) and whose other layers
use RoPE over a sliding window (SWA, Beltagy et al. 2020, "Longformer", https://arxiv.org/abs/2004.05150, §3.1:
``j ∈ (i - w, i]``), in the ratio 1 global : 3 local (``global_every = 4``), as in Cohere Command A and R7B and in
Llama 4's interleaved NoPE layers. Each layer is scaled dot-product attention (Vaswani eq. 1) through
:func:`edifice.ops.sdpa`; the local layers pass ``window`` to it and rotate q and k (RoFormer eq. 34), the global
layers pass neither. Everything else is :class:`~edifice_attention.decoder_only.DecoderOnly`'s Llama-style stack
(GQA, SwiGLU, pre-norm), with Cohere's options: a parallel block ``x + Attn(LN(x)) + FFN(LN(x))`` sharing one norm
(``parallel_block``; GPT-J/PaLM style), a bias-free LayerNorm (``norm_bias=False``) and a logit scale.

Decoding: ``init_state`` gives each local layer a constant-size
:class:`~edifice.blocks.kv_cache.SlidingWindowKVCache` (a ring of ``window`` slots, static and written in place,
whatever ``max_len``), and each global layer the usual KV cache (static with ``max_len``). The memory of a local layer
therefore does not grow with the context; only the NoPE layers' does.

Deviations: Command A's interleaved RoPE pairs are mapped to the rotate-half layout by the converter (q and k rows
are permuted alike, so scores are unchanged); the paper's training recipe (length curriculum, RoPE θ per stage) is
training, not architecture. Llama 4's chunked local attention and query-temperature tuning are not modelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

import edifice
from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceOutput
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.errors import ConfigError
from edifice.initialization import reset_submodules
from edifice_attention._hf_convert import deinterleave_rows, load_converted, rename_state_dict
from edifice_attention.configs.rnope_swa import RNoPESWAConfig
from edifice_attention.convert import _get, _rope_fields, _unpack
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["ParallelBlock", "RNoPESWA", "cohere2_config", "from_cohere2"]


class ParallelBlock(nn.Module):
    """``y = x + Dropout(Mixer(Norm(x))) + Dropout(FFN(Norm(x)))`` with one shared norm (Cohere, GPT-J, PaLM)."""

    def __init__(self, d_model: int, mixer: nn.Module, ffn: nn.Module, *, norm: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.mixer_norm = norm
        self.mixer = mixer
        self.ffn = ffn
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        """Reset the norm, the mixer and the FFN."""
        reset_submodules(self)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> tuple[Tensor, Tensor | None]:
        """``x [B, T, d_model]`` -> ``(y, None)``; ``state`` is the mixer's, updated in place."""
        h = self.mixer_norm(x)
        out = self.mixer(h, mask=mask, positions=positions, state=state)
        return x + self.dropout(out) + self.dropout(self.ffn(h)), None

    def init_state(self, batch_size: int, **kwargs: Any) -> Any:
        """The mixer's decoding state."""
        return self.mixer.init_state(batch_size, **kwargs)  # type: ignore[operator]


class RNoPESWA(DecoderOnly):
    """decoder_only with NoPE global layers every ``global_every`` layers and RoPE sliding-window layers between."""

    config_class: ClassVar[type[ArchConfig]] = RNoPESWAConfig
    config: RNoPESWAConfig

    def _norm(self) -> nn.Module:
        c = self.config
        name = "layernorm_nobias" if c.norm == "layernorm" and not c.norm_bias else c.norm
        return get_norm(name, c.d_model, eps=c.norm_eps)

    def build_mixer(self, index: int) -> nn.Module:
        """decoder_only's attention; a global layer has neither RoPE (NoPE) nor a window (full causal attention), a
        local layer decodes from a constant-size ring of ``window`` keys."""
        kwargs = self.attention_kwargs()
        if self.config.is_global(index):
            kwargs.update(rope=None, window=None)
        else:
            kwargs.update(ring_cache=True)
        return Attention(**kwargs)

    def build_layer(self, index: int) -> nn.Module:
        """decoder_only's block with this entry's norms, or a parallel block sharing one norm."""
        c = self.config
        layer = super().build_layer(index)
        assert isinstance(layer, TransformerBlock) and layer.ffn is not None
        if c.parallel_block:
            return ParallelBlock(c.d_model, layer.mixer, layer.ffn, norm=self._norm(), dropout=c.dropout)
        layer.mixer_norm, layer.ffn_norm = self._norm(), self._norm()
        return layer

    def build_norm(self) -> nn.Module:
        """The final norm (bias-free LayerNorm when ``norm_bias=False``)."""
        return self._norm()

    def _output(self, h: Tensor, aux: Tensor | None) -> Tensor | SequenceOutput:
        if self.lm_head is not None and self.config.logit_scale != 1.0:
            h = h * self.config.logit_scale  # logits = scale * lm_head(h); the head has no bias
        return super()._output(h, aux)


# -- converter from transformers' Cohere2 -------------------------------------------------------------------------
_LAYER_KEYS = {
    **{f"self_attn.{p}": f"mixer.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
    **{f"mlp.{p}": f"ffn.{p}" for p in ("gate_proj", "up_proj", "down_proj")},
    "input_layernorm": "mixer_norm",
}


def _global_every(layer_types: list[str]) -> int:
    """The period k with layer i global iff (i + 1) % k == 0 that ``layer_types`` follows (else a ConfigError)."""
    for k in range(1, len(layer_types) + 2):
        expected = ["full_attention" if (i + 1) % k == 0 else "sliding_attention" for i in range(len(layer_types))]
        if expected == list(layer_types):
            return k
    raise ConfigError(f"Cohere2 converter: layer_types {layer_types} are not periodic (layer i global iff (i+1)%k==0)")


def cohere2_config(hf: Any, **overrides: Any) -> RNoPESWAConfig:
    """The :class:`RNoPESWAConfig` of a transformers ``Cohere2Config`` (object or ``config.json`` dict)."""
    if _get(hf, "hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"Cohere2 config: hidden_act={_get(hf, 'hidden_act')!r} is not supported (SwiGLU 'silu')")
    n_heads = _get(hf, "num_attention_heads")
    head_dim = _get(hf, "head_dim") or _get(hf, "hidden_size") // n_heads
    fields: dict[str, Any] = {
        "vocab_size": _get(hf, "vocab_size"),
        "d_model": _get(hf, "hidden_size"),
        "n_layers": _get(hf, "num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": _get(hf, "num_key_value_heads") or n_heads,
        "head_dim": head_dim,
        "d_ff": _get(hf, "intermediate_size"),
        "ffn": "swiglu",
        "norm": "layernorm",
        "norm_bias": False,
        "norm_eps": float(_get(hf, "layer_norm_eps", 1e-5)),
        "parallel_block": True,
        "logit_scale": float(_get(hf, "logit_scale", 1.0) or 1.0),
        "window": _get(hf, "sliding_window"),
        "global_every": _global_every(_get(hf, "layer_types")),
        "attention_bias": bool(_get(hf, "attention_bias", False)),
        "attention_dropout": float(_get(hf, "attention_dropout", 0.0) or 0.0),
        "tie_embeddings": bool(_get(hf, "tie_word_embeddings", True)),
        "init_std": float(_get(hf, "initializer_range", 0.02)),
        **_rope_fields(hf, head_dim),
    }
    return edifice.config("rnope_swa", **{**fields, **overrides})  # type: ignore[return-value]


def map_cohere2_state_dict(state_dict: Mapping[str, Tensor], config: RNoPESWAConfig) -> dict[str, Tensor]:
    """Rename a Cohere2 state dict to :class:`RNoPESWA`'s keys, permuting q/k rows to the rotate-half layout."""
    d = config.head_size

    def transform(module: str, value: Tensor) -> Tensor:
        return deinterleave_rows(value, 0, d, d) if module in ("self_attn.q_proj", "self_attn.k_proj") else value

    return rename_state_dict(state_dict, _LAYER_KEYS, config, who="Cohere2", transform=transform)


def from_cohere2(source: Any, **overrides: Any) -> RNoPESWA:
    """Convert a transformers ``Cohere2ForCausalLM``/``Cohere2Model`` (or ``(config, state_dict)``) to ``rnope_swa``."""
    hf_config, state_dict = _unpack(source)
    config = cohere2_config(hf_config, **overrides)
    weights = map_cohere2_state_dict(state_dict, config)
    return load_converted(RNoPESWA, config, weights, who="Cohere2")
