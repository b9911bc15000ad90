"""Perceiver / Perceiver IO: a small latent array reads a large input by cross-attention, then self-attends.

Papers: Jaegle, Gimeno, Brock, Zisserman, Vinyals & Carreira (2021), "Perceiver: General Perception with Iterative
Attention", ICML 2021, https://arxiv.org/abs/2103.03206; Jaegle et al. (2022), "Perceiver IO: A General Architecture
for Structured Inputs & Outputs", ICLR 2022, https://arxiv.org/abs/2107.14795.

Implemented (Perceiver IO §2, Fig. 2; the layer layout of the authors' JAX code and transformers' ``PerceiverModel``):

* the **latent array** ``z₀ ∈ R^{N×D}``, a learned parameter (truncated-normal init, std 0.02);
* **encode**: one cross-attention layer, queries from the latents, keys/values from the input ``x [B, T, d_in]``:
  ``a = z + Attn(LN(z), LN(x))`` (the query residual), ``z = a + MLP(LN(a))``; attention is multi-head softmax
  attention (:class:`edifice.blocks.attention.CrossAttention`, i.e. :func:`edifice.ops.sdpa`), padded inputs masked;
* **process**: ``num_blocks`` repeats of ``n_layers`` pre-norm latent self-attention layers
  ``z = z + Attn(LN(z)); z = z + MLP(LN(z))``, the weights shared between repeats (Perceiver §2, "weight sharing");
* **decode** (Perceiver IO §2.2, optional): ``num_outputs`` learned output queries cross-attend to the latents (the
  same layer form, with the query residual) and a final linear layer maps them to ``d_out``.

Cost: ``O(T·N)`` for the encoder and ``O(N²)`` per latent layer, linear in the input length.

Deviations: inputs are the array ``x`` as given -- the modality preprocessors (embeddings, Fourier position features,
patches) of transformers' wrappers are not part of the entry; a query's width is the latent width (transformers
also allows other widths for the decoder queries); the value width equals the query/key width (``qk_channels``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.attention import CrossAttention
from edifice.blocks.ffn import FeedForward
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice.model import Model
from edifice_attention.configs.perceiver import PerceiverConfig

__all__ = ["Perceiver", "PerceiverLayer", "from_perceiver"]


class PerceiverLayer(nn.Module):
    """``a = [q +] Attn(LN(q), LN(ctx) or LN(q)); y = a + MLP(LN(a))`` -- a cross- or self-attention layer."""

    def __init__(
        self,
        q_dim: int,
        n_heads: int,
        qk_channels: int,
        *,
        kv_dim: int | None,
        widening: int,
        query_residual: bool,
        config: PerceiverConfig,
    ) -> None:
        super().__init__()
        self.cross = kv_dim is not None
        self.query_norm = get_norm("layernorm", q_dim, eps=config.norm_eps)
        self.context_norm = get_norm("layernorm", kv_dim, eps=config.norm_eps) if kv_dim is not None else None
        self.attn = CrossAttention(
            q_dim, n_heads, d_context=kv_dim or q_dim, head_dim=qk_channels // n_heads, bias=True
        )
        self.query_residual = query_residual
        self.mlp_norm = get_norm("layernorm", q_dim, eps=config.norm_eps)
        self.mlp = FeedForward(q_dim, widening * q_dim, activation=config.activation)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, q: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """``q [B, N, q_dim]`` (with ``context [B, T, kv_dim]`` for a cross layer) -> ``[B, N, q_dim]``."""
        h = self.query_norm(q)
        if self.context_norm is not None:
            assert context is not None
            a = self.dropout(self.attn(h, self.context_norm(context), context_mask=context_mask))
        else:
            a = self.dropout(self.attn(h, h))
        if self.query_residual:
            a = a + q
        out: Tensor = a + self.dropout(self.mlp(self.mlp_norm(a)))
        return out


class Perceiver(Model):
    """Perceiver (IO): latents, encoder cross-attention, a shared latent self-attention block, optional decoder."""

    config_class: ClassVar[type[ArchConfig]] = PerceiverConfig
    config: PerceiverConfig

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__(config)
        c = config
        self.latents = nn.Parameter(torch.empty(c.num_latents, c.d_model))
        self.encoder = PerceiverLayer(
            c.d_model,
            c.n_cross_heads,
            c.qk_channels or c.d_in,
            kv_dim=c.d_in,
            widening=c.cross_widening,
            query_residual=c.query_residual,
            config=c,
        )
        self.layers = nn.ModuleList(
            PerceiverLayer(
                c.d_model,
                c.n_heads,
                c.qk_channels or c.d_model,
                kv_dim=None,
                widening=c.self_widening,
                query_residual=True,
                config=c,
            )
            for _ in range(c.n_layers)
        )
        self.output_queries: nn.Parameter | None = None
        self.decoder: PerceiverLayer | None = None
        self.output_proj: nn.Module | None = None
        if c.num_outputs is not None:
            self.output_queries = nn.Parameter(torch.empty(c.num_outputs, c.d_model))
            self.decoder = PerceiverLayer(
                c.d_model,
                c.n_cross_heads,
                c.qk_channels or c.d_model,
                kv_dim=c.d_model,
                widening=c.cross_widening,
                query_residual=c.query_residual,
                config=c,
            )
            self.output_proj = nn.Linear(c.d_model, c.d_out or c.d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) linear weights, zero biases, unit LayerNorms; truncated-normal latents and queries."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for p in (self.latents, self.output_queries):
            if p is not None and not p.is_meta:
                nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``x [B, T, d_in]`` -> latents ``[B, num_latents, d_model]`` (or outputs ``[B, num_outputs, d_out]``)."""
        self.check_inputs(x=x, attention_mask=attention_mask)
        z: Tensor = self.latents.expand(x.shape[0], -1, -1)
        z = self.encoder(z, x, attention_mask)
        for _ in range(self.config.num_blocks):
            for layer in self.layers:
                z = layer(z)
        if self.decoder is None or self.output_queries is None or self.output_proj is None:
            return z
        q = self.output_queries.expand(x.shape[0], -1, -1)
        out: Tensor = self.output_proj(self.decoder(q, z))
        return out


# -- transformers checkpoints ---------------------------------------------------------------------------------------
_LAYER = {
    "attention.self.layernorm1": "query_norm",
    "attention.self.layernorm2": "context_norm",
    "attention.self.query": "attn.q_proj",
    "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj",
    "attention.output.dense": "attn.o_proj",
    "layernorm": "mlp_norm",
    "mlp.dense1": "mlp.up_proj",
    "mlp.dense2": "mlp.down_proj",
}


def _layer_key(rest: str, target: str) -> str | None:
    module, _, leaf = rest.rpartition(".")
    return f"{target}.{_LAYER[module]}.{leaf}" if module in _LAYER else None


def from_perceiver(source: Any, **overrides: Any) -> Perceiver:
    """Convert transformers' ``PerceiverModel`` built without input/output preprocessors (a model, or
    ``(model.config, state_dict)``); a ``PerceiverBasicDecoder`` with trainable position-encoding queries maps to the
    Perceiver IO decoder (pass ``num_outputs``, ``d_out`` and ``query_residual`` as overrides when the config alone does
    not say them)."""
    if isinstance(source, tuple) and len(source) == 2:
        hf, state_dict = source
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf, state_dict = source.config, source.state_dict()
    else:
        raise TypeError(f"Perceiver converter: source must be a model or (config, state_dict), got {type(source)}")
    sd = {k.removeprefix("perceiver."): v.detach().clone() for k, v in state_dict.items()}
    if hf.qk_channels is not None and hf.v_channels not in (None, hf.qk_channels):
        raise CheckpointError("Perceiver converter: v_channels != qk_channels is not supported")
    if hf.cross_attention_shape_for_attention != "kv" and hf.qk_channels is None:
        raise CheckpointError("Perceiver converter: cross_attention_shape_for_attention='q' needs qk_channels set")
    options: dict[str, Any] = {
        "d_in": hf.d_model,
        "d_model": hf.d_latents,
        "num_latents": hf.num_latents,
        "n_layers": hf.num_self_attends_per_block,
        "num_blocks": hf.num_blocks,
        "n_heads": hf.num_self_attention_heads,
        "n_cross_heads": hf.num_cross_attention_heads,
        "qk_channels": hf.qk_channels,
        "self_widening": hf.self_attention_widening_factor,
        "cross_widening": hf.cross_attention_widening_factor,
        "query_residual": hf.use_query_residual,
        "activation": hf.hidden_act,
        "norm_eps": 1e-5,
    }
    query_key = "decoder.output_position_encodings.position_embeddings"
    if query_key in sd:
        options["num_outputs"] = sd[query_key].shape[0]
        options["d_out"] = sd["decoder.final_layer.weight"].shape[0]
    options.update(overrides)
    config = PerceiverConfig(**options)
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key == "embeddings.latents":
            out["latents"] = value
        elif key == query_key:
            out["output_queries"] = value
        elif key.startswith("decoder.final_layer."):
            out["output_proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("encoder.cross_attention."):
            name = _layer_key(key.removeprefix("encoder.cross_attention."), "encoder")
            out[name or key] = value
            unknown += [] if name else [key]
        elif key.startswith("encoder.self_attends."):
            index, rest = key.removeprefix("encoder.self_attends.").split(".", 1)
            name = _layer_key(rest, f"layers.{index}")
            out[name or key] = value
            unknown += [] if name else [key]
        elif key.startswith("decoder.decoding_cross_attention."):
            name = _layer_key(key.removeprefix("decoder.decoding_cross_attention."), "decoder")
            out[name or key] = value
            unknown += [] if name else [key]
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"Perceiver converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    with torch.device("meta"):
        model = Perceiver(config)
    try:
        model.load_state_dict(out, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"Perceiver converter: the mapped weights do not fit perceiver: {exc}") from None
    return model
