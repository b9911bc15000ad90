"""Causal transformer sequence models: ``decoder_only`` (Llama-style), ``attention`` (Vaswani) and ``gqa`` (Ainslie).

The three registry entries are one module, :class:`DecoderOnly`, with different config defaults: the mechanisms are
the same stack of residual blocks, each a causal self-attention mixer and a feed-forward network, and every feature
that tells them apart is a config field (x-transformers style).

``decoder_only`` -- Touvron et al. (2023), "LLaMA: Open and Efficient Foundation Language Models",
https://arxiv.org/abs/2302.13971, in the GPT lineage (Radford et al. 2018/2019): pre-normalisation with RMSNorm (§2.2,
Zhang & Sennrich 2019 eq. 4), SwiGLU feed-forward (§2.2, Shazeer 2020 eq. 6), rotary embeddings (§2.2, Su et al.
2021 eq. 34) with optional partial rotation and NTK/YaRN/Llama-3 scaling, grouped-query attention (Llama 2), tied or
untied embeddings, and an optional sparse mixture-of-experts FFN as in Mixtral (Jiang et al. 2024,
https://arxiv.org/abs/2401.04088, eqs. 1-2) whose load-balancing loss (Switch, Fedus et al. 2021 eq. 4) is summed
over layers into ``aux_loss``.

``attention`` -- Vaswani et al. (2017), "Attention Is All You Need", https://arxiv.org/abs/1706.03762, as a causal
sequence model (the decoder stack without cross-attention): scaled dot-product attention (eq. 1), multi-head attention
(§3.2.2), the position-wise FFN ``max(0, x W1 + b1) W2 + b2`` (eq. 2), post-norm residuals ``LayerNorm(x +
Dropout(Sublayer(x)))`` (§3.1, §5.4), token embeddings scaled by sqrt(d_model) (§3.4) plus the sinusoidal encoding
(§3.5), and the original Edifice option of a sliding window (``window``, Mistral's definition: a query sees itself and
the ``window - 1`` positions before it).

``gqa`` -- Ainslie et al. (2023), "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints", https://arxiv.org/abs/2305.13245, §2.2: ``n_heads`` query heads share ``n_kv_heads`` key/value heads
in contiguous groups (``n_kv_heads=1`` is multi-query attention), in the decoder_only stack.

Deviations: every entry is causal (the paper's encoder-decoder is out of scope); the Vaswani entry's initialisation is
the GPT one (normal, std ``init_std``, zero biases) since the paper specifies none; GQA is trained from scratch here
rather than uptrained from a multi-head checkpoint (the paper's mean-pooling conversion of key/value heads is a
checkpoint transformation, not an architecture). ``step`` decodes with a KV cache (dynamic, or static with
``max_len``); the ``dynamic_ntk`` RoPE scaling depends on the longest position seen, so stepping equals ``forward``
only while no call exceeds the original context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.activations import get_activation
from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import get_ffn
from edifice.blocks.moe import MoEFeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.positional import SinusoidalPositionalEmbedding
from edifice.blocks.rope import RopeScaling, RotaryEmbedding
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.errors import ConfigError
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["DecoderOnly"]


class DecoderOnly(SequenceBackbone):
    """A causal transformer: ``n_layers`` x (self-attention + FFN or MoE) over tokens or features (see module doc).

    Parameter names follow transformers' Llama where they can (``q_proj``/``k_proj``/``v_proj``/``o_proj``,
    ``gate_proj``/``up_proj``/``down_proj``, ``embed_tokens``, ``lm_head``); each layer is a
    :class:`~edifice.blocks.transformer.TransformerBlock` with ``mixer_norm``, ``mixer``, ``ffn_norm`` and ``ffn``.
    """

    config_class: ClassVar[type[ArchConfig]] = DecoderOnlyConfig
    config: DecoderOnlyConfig

    def __init__(self, config: DecoderOnlyConfig) -> None:
        _check_torch_side_fields(config)
        super().__init__(config)
        self.returns_aux_loss = config.n_experts > 0
        # Vaswani §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), added to the embeddings.
        self.positional = SinusoidalPositionalEmbedding(config.d_model) if config.positional == "sinusoidal" else None
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
        self.reset_parameters()

    # -- SequenceBackbone hooks -----------------------------------------------------------------------------------
    def build_layer(self, index: int) -> nn.Module:
        """One residual block: the :meth:`build_mixer` attention, then a dense or mixture-of-experts FFN."""
        c = self.config
        return TransformerBlock(
            c.d_model,
            self.build_mixer(index),
            self._build_ffn(),
            norm=c.norm,
            norm_eps=c.norm_eps,
            norm_position=c.norm_position,
            dropout=c.dropout,
        )

    def build_rope(self, head_dim: int | None = None) -> RotaryEmbedding | None:
        """The rotary embedding of one layer (``head_dim`` defaults to the config's head size), or None."""
        c = self.config
        if c.positional != "rope":
            return None
        head_dim = c.head_size if head_dim is None else head_dim
        return RotaryEmbedding(head_dim, rotary_dim=c.rotary_dim, base=c.rope_base, scaling=c.rope_scaling)

    def build_mixer(self, index: int) -> nn.Module:
        """Layer ``index``'s token mixer: causal (grouped-query) self-attention. Attention variants override this."""
        return Attention(**self.attention_kwargs())

    def attention_kwargs(self) -> dict[str, Any]:
        """The keywords of :class:`~edifice.blocks.attention.Attention` that the config fixes (a fresh RoPE each)."""
        c = self.config
        return {
            "d_model": c.d_model,
            "n_heads": c.n_heads,
            "n_kv_heads": c.kv_heads,
            "head_dim": c.head_size,
            "causal": True,
            "window": c.window,
            "rope": self.build_rope(),
            "bias": c.attention_bias,
            "qk_norm": c.qk_norm,
            "norm_eps": c.norm_eps,
            "softcap": c.softcap,
            "dropout": c.attention_dropout,
        }

    def _build_ffn(self) -> nn.Module:
        c = self.config
        if c.n_experts:
            # Mixtral: softmax over all experts, keep the top k, renormalise (eq. 1-2); SwiGLU experts.
            return MoEFeedForward(
                c.d_model, c.ffn_hidden, c.n_experts, c.moe_top_k, activation="silu", aux_loss_coef=c.moe_aux_loss_coef
            )
        kwargs = {"activation": c.activation} if c.ffn == "mlp" else {}
        return get_ffn(c.ffn, c.d_model, c.ffn_hidden, bias=c.ffn_bias, **kwargs)

    def build_norm(self) -> nn.Module:
        """Pre-norm stacks end with a norm (GPT-2/Llama); post-norm ones are already normalised (Vaswani)."""
        c = self.config
        return get_norm(c.norm, c.d_model, eps=c.norm_eps) if c.norm_position == "pre" else nn.Identity()

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """Embed tokens (scaled by sqrt(d_model) when ``scale_embeddings``, Vaswani §3.4) or project features."""
        h = super().embed_inputs(inputs)
        return h * self.embed_scale if self.embed_tokens is not None and self.embed_scale != 1.0 else h

    def embed_positions(self, h: Tensor, positions: Tensor | None) -> Tensor:
        """Add the sinusoidal encoding of each position (``positional="sinusoidal"``); RoPE acts inside attention."""
        if self.positional is None:
            return h
        if positions is None:
            positions = torch.arange(h.shape[1], device=h.device)
        encoding: Tensor = self.positional(positions)  # (T, d) or (B, T, d), fp32; broadcasts over the batch
        return h + encoding.to(h.dtype)

    # -- initialisation -----------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Normal(0, ``init_std``) linear and embedding weights, zero biases, unit norm gains (GPT-2/Llama)."""
        super().reset_parameters()
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)


def _check_torch_side_fields(config: DecoderOnlyConfig) -> None:
    """Fields whose valid values live in torch-side registries (RoPE scalings, activations): a ConfigError here."""
    checks: list[tuple[str, Callable[[], object]]] = [("rope_scaling", lambda: RopeScaling.parse(config.rope_scaling))]
    if config.ffn == "mlp" and not config.n_experts:
        checks.append(("activation", lambda: get_activation(config.activation)))
    for name, check in checks:
        try:
            check()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{config.arch}: field '{name}'={getattr(config, name)!r}: {exc}") from None
