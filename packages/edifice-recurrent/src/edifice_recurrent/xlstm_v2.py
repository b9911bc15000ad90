"""``xlstm_v2``: the xLSTM 7B language model -- mLSTM blocks, soft-capped gates and logits, the 7B initialisation.

Beck, Pöppel, Lippe, Kurle, Blies, Klambauer, Böck & Hochreiter, "xLSTM 7B: A Recurrent LLM for Fast and Efficient
Inference", 2025, https://arxiv.org/abs/2503.13427. The follow-up to xLSTM (Beck et al. 2024, arXiv:2405.04517)
rebuilds the mLSTM block for throughput and stable large-scale training; this entry is that complete language model:

* the mLSTM cell of xLSTM (2024) eqs. 19-27 with its stabiliser (:func:`edifice.ops.mlstm`, chunkwise-parallel for
  training, recurrent for ``step``), with per-head scalar input/forget gates projected from the block input;
* the *post-up-projection* block of xLSTM 7B §3.1 (Fig. 3): ``x + W_out(o ⊙ MultiHeadNorm(mLSTM(q, k, v, ĩ, f̃)))``
  with ``q, k, v, o`` dense projections of ``RMSNorm(x)`` (query/key width ``qk_dim_factor·d``, value width
  ``v_dim_factor·d``), then ``x + SwiGLU(RMSNorm(x))`` -- no up-projection around the cell, no causal convolution,
  no learnable skip (the mixer is :class:`edifice_recurrent.xlstm.MLSTMLayer`, shared with ``mlstm``);
* the stability measures of §3.2: RMSNorm instead of LayerNorm, soft-capping ``a·tanh(x/a)`` of the gate
  pre-activations (``a = 15``) and of the output logits (``a = 30``), and a negative input-gate bias init (-10);
* the initialisation of the official training code (NX-AI xlstm-jax): "small init" ``N(0, 2/(5d))`` for the
  embedding, the q/k/v/o-gate and feed-forward input projections and the LM head, "Wang init"
  ``N(0, (2/(L·sqrt(d)))²)`` for the two output projections of every block, zero input/forget-gate weights, input-gate
  biases ``-10`` and forget-gate biases ``linspace(3, 6)`` over heads, unit norm gains.

Deviations: transformers' ``xLSTMPreTrainedModel._init_weights`` zero-initialises every linear whose name contains
"gate" -- the output gate and the FFN's gate projection too -- and scales the FFN down-projection by its input width;
we follow xlstm-jax (small init for both gates, Wang init with ``d_model``), which only changes the initial state,
not the architecture. The mLSTM normaliser adds ``eps`` to ``max(|n^T q|, exp(-m))`` as the 7B kernels do.
``weight_mode="fused"`` checkpoints (one q/k/v/o projection, one i/f projection, one gate/up projection) are split on
conversion; the model itself always keeps the separate ("single") projections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.ffn import GatedFeedForward
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice_recurrent.configs.xlstm_v2 import XLSTMV2Config
from edifice_recurrent.xlstm import XLSTM, MLSTMLayer, map_transformers_state_dict, soft_cap

__all__ = [
    "XLSTMV2",
    "SoftCappedLMHead",
    "from_transformers",
    "map_fused_state_dict",
    "xlstm_v2_config_from_transformers",
]


class SoftCappedLMHead(nn.Linear):
    """The LM head with soft-capped logits ``cap·tanh(W h / cap)`` (xLSTM 7B §3.2), computed in fp32."""

    def __init__(self, d_model: int, vocab_size: int, cap: float | None) -> None:
        super().__init__(d_model, vocab_size, bias=False)
        self.cap = cap

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., d_model]`` -> soft-capped logits ``[..., vocab_size]`` in the projection's dtype."""
        logits = super().forward(x)
        return soft_cap(logits.float(), self.cap).to(logits.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cap={self.cap}"


class XLSTMV2(XLSTM):
    """xLSTM 7B: ``n_layers`` mLSTM + SwiGLU blocks, final RMSNorm, soft-capped LM head (module doc)."""

    config_class: ClassVar[type[ArchConfig]] = XLSTMV2Config
    config: XLSTMV2Config

    def __init__(self, config: XLSTMV2Config) -> None:
        super().__init__(config)
        if config.vocab_size is not None:
            self.lm_head = SoftCappedLMHead(config.d_model, config.vocab_size, config.logit_soft_cap)
            self.tie_weights()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The xLSTM 7B initialisation (module doc): small init, Wang init for block outputs, gate biases."""
        super().reset_parameters()
        cfg = self.config
        small = math.sqrt(2.0 / (5.0 * cfg.d_model))
        wang = 2.0 / cfg.n_layers / math.sqrt(cfg.d_model)
        with torch.no_grad():
            if self.embed_tokens is not None:
                nn.init.normal_(self.embed_tokens.weight, std=small)
            if self.lm_head is not None and self.lm_head.weight is not getattr(self.embed_tokens, "weight", None):
                nn.init.normal_(self.lm_head.weight, std=small)
            for block in self.layers:
                mixer, ffn = block.mixer, block.ffn
                assert isinstance(mixer, MLSTMLayer) and isinstance(ffn, GatedFeedForward)
                for lin in (mixer.q, mixer.k, mixer.v, mixer.ogate_preact, ffn.gate_proj, ffn.up_proj):
                    nn.init.normal_(lin.weight, std=small)
                for lin in (mixer.out_proj, ffn.down_proj):
                    nn.init.normal_(lin.weight, std=wang)
                for module in block.modules():
                    if isinstance(module, nn.Linear) and module.bias is not None:
                        nn.init.zeros_(module.bias)
                # Gates start input-independent: ĩ = -10 (write little), f̃ = linspace(3, 6) (keep long memories).
                nn.init.zeros_(mixer.igate_preact.weight)
                nn.init.zeros_(mixer.fgate_preact.weight)
                mixer.igate_preact.bias.fill_(cfg.igate_bias_init)
                mixer.fgate_preact.bias.copy_(torch.linspace(3.0, 6.0, cfg.n_heads))


# -- checkpoint conversion ------------------------------------------------------------------------------------------
def _hf_get(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)


def xlstm_v2_config_from_transformers(hf: Any, **overrides: Any) -> XLSTMV2Config:
    """The ``xlstm_v2`` config of a transformers ``xLSTMConfig`` (or its ``config.json`` dict); ``overrides`` win."""
    if _hf_get(hf, "weight_mode", "single") not in ("single", "fused"):
        raise CheckpointError(f"xLSTM converter: unknown weight_mode {_hf_get(hf, 'weight_mode')!r}")
    if _hf_get(hf, "use_bias", False):
        raise CheckpointError("xLSTM converter: use_bias=True adds norm biases this model does not have")
    embedding_dim = _hf_get(hf, "embedding_dim")
    if embedding_dim is not None and embedding_dim != _hf_get(hf, "hidden_size"):
        raise CheckpointError("xLSTM converter: embedding_dim must equal hidden_size")
    fields: dict[str, Any] = {
        "d_model": _hf_get(hf, "hidden_size"),
        "n_layers": _hf_get(hf, "num_blocks") or _hf_get(hf, "num_hidden_layers"),
        "n_heads": _hf_get(hf, "num_heads"),
        "vocab_size": _hf_get(hf, "vocab_size"),
        "qk_dim_factor": _hf_get(hf, "qk_dim_factor", 0.5),
        "v_dim_factor": _hf_get(hf, "v_dim_factor", 1.0),
        "ffn_factor": _hf_get(hf, "ffn_proj_factor", 2.667),
        "ffn_multiple_of": _hf_get(hf, "ffn_round_up_to_multiple_of", 64),
        "gate_soft_cap": _hf_get(hf, "gate_soft_cap", 15.0),
        "logit_soft_cap": _hf_get(hf, "output_logit_soft_cap", 30.0),
        "chunk_size": _hf_get(hf, "chunk_size", 64),
        "norm_eps": _hf_get(hf, "norm_eps", 1e-6),
        "eps": _hf_get(hf, "eps", 1e-6),
        "tie_embeddings": bool(_hf_get(hf, "tie_word_embeddings", False)),
    }
    return XLSTMV2Config(**{**fields, **overrides})


def map_fused_state_dict(state_dict: Mapping[str, Tensor], hf: Any) -> dict[str, Tensor]:
    """Split a ``weight_mode="fused"`` state dict into the ``"single"`` layout (other keys pass through).

    ``qkv_opreact`` -> ``q, k, v, ogate_preact``; ``ifgate_preact`` -> ``igate_preact, fgate_preact``;
    ``ffn.proj_up_gate_z`` -> ``ffn.proj_up_gate, ffn.proj_up`` (transformers' split order).
    """
    d = _hf_get(hf, "hidden_size")
    qk, v = int(d * _hf_get(hf, "qk_dim_factor", 0.5)), int(d * _hf_get(hf, "v_dim_factor", 1.0))
    H = _hf_get(hf, "num_heads")
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix.endswith("mlstm_layer.qkv_opreact"):
            base = prefix.removesuffix("qkv_opreact")
            for name, part in zip(("q", "k", "v", "ogate_preact"), torch.split(value, [qk, qk, v, v]), strict=True):
                out[f"{base}{name}.{leaf}"] = part
        elif prefix.endswith("mlstm_layer.ifgate_preact"):
            base = prefix.removesuffix("ifgate_preact")
            for name, part in zip(("igate_preact", "fgate_preact"), torch.split(value, [H, H]), strict=True):
                out[f"{base}{name}.{leaf}"] = part
        elif prefix.endswith("ffn.proj_up_gate_z"):
            base = prefix.removesuffix("proj_up_gate_z")
            gate, up = value.chunk(2, dim=0)
            out[f"{base}proj_up_gate.{leaf}"], out[f"{base}proj_up.{leaf}"] = gate, up
        else:
            out[key] = value
    return out


def from_transformers(source: Any, **overrides: Any) -> XLSTMV2:
    """Convert a transformers ``xLSTMForCausalLM`` (or a ``(config, state_dict)`` pair) to an ``xlstm_v2`` model.

    Both ``weight_mode`` layouts are accepted; the model takes ``input_ids`` and returns the soft-capped logits.
    """
    if isinstance(source, tuple) and len(source) == 2:
        hf_config, state_dict = source
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf_config, state_dict = source.config, source.state_dict()
    else:
        raise TypeError(f"xLSTM converter: source must be a transformers model or (config, state_dict), got {source!r}")
    if _hf_get(hf_config, "weight_mode", "single") == "fused":
        state_dict = map_fused_state_dict(state_dict, hf_config)
    weights = map_transformers_state_dict(state_dict)
    head, embed = weights.get("lm_head.weight"), weights.get("embed_tokens.weight")
    declared_tied = bool(_hf_get(hf_config, "tie_word_embeddings", False))
    if head is None and not (declared_tied and embed is not None):
        raise CheckpointError(
            "xLSTM converter: no lm_head.weight; convert an xLSTMModel with 'transformers.xLSTMModel'"
        )
    # transformers' xLSTMForCausalLM never ties its head (whatever tie_word_embeddings says), so the weights decide.
    tied = head is None or (embed is not None and head.shape == embed.shape and torch.equal(head, embed))
    weights["lm_head.weight"] = embed if head is None else head  # type: ignore[assignment]
    config = xlstm_v2_config_from_transformers(hf_config, **{"tie_embeddings": tied, **overrides})
    with torch.device("meta"):
        model = XLSTMV2(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"xLSTM converter: the mapped weights do not fit xlstm_v2: {exc}") from None
    model.tie_weights()  # assign=True loaded the tied weight as two tensors; share one again
    return model
