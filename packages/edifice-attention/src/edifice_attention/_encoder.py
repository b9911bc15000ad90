"""The BERT-style bidirectional encoder shared by ``fnet`` and ``nystromformer``, and its checkpoint renaming.

::

    h = LayerNorm(embed(x) + P[0 .. T-1])          (learned positions; a checkpoint's token-type row 0 folded in)
    h = embed_projection(h)                         (FNet's extra dense layer; identity otherwise)
    h = LayerNorm(h + Mixer(h)); h = LayerNorm(h + MLP(h))      for each layer (post-norm, Vaswani et al. 2017 §3.1)

There is no final norm (post-norm blocks end normalised). Each entry supplies :meth:`EncoderBackbone.build_mixer`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.ffn import get_ffn
from edifice.blocks.norms import get_norm
from edifice.blocks.positional import LearnedPositionalEmbedding
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice_attention._linear_attention import MixerStackBackbone
from edifice_attention.configs._encoder import EncoderConfig

__all__ = ["EncoderBackbone", "bert_config_fields", "rename_encoder_state_dict"]


class EncoderBackbone(MixerStackBackbone):
    """Learned positions, embedding LayerNorm, post-norm blocks of :meth:`build_mixer` and an MLP; no final norm."""

    config_class: ClassVar[type[ArchConfig]] = EncoderConfig
    config: EncoderConfig

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        self.position_embedding = LearnedPositionalEmbedding(config.max_len, config.d_model)
        self.embed_norm = get_norm(config.norm, config.d_model, eps=config.norm_eps)
        self.embed_projection = self.build_embed_projection()
        self.reset_parameters()

    def build_embed_projection(self) -> nn.Module:
        """A map applied after the embedding norm (identity; FNet has a dense layer)."""
        return nn.Identity()

    def build_layer(self, index: int) -> nn.Module:
        """``LayerNorm(h + Mixer(h))`` then ``LayerNorm(h + MLP(h))`` (post-norm)."""
        c = self.config
        ffn = self.build_ffn() if c.ffn_hidden else None
        return TransformerBlock(
            c.d_model,
            self.build_mixer(index),
            ffn,
            norm=c.norm,
            norm_eps=c.norm_eps,
            norm_position="post",
            dropout=c.dropout,
        )

    def build_ffn(self) -> nn.Module:
        """The block's MLP with the configured activation (gated kinds fix theirs)."""
        c = self.config
        options: dict[str, Any] = {"activation": c.activation} if c.ffn in ("mlp", "glu") else {}
        return get_ffn(c.ffn, c.d_model, c.ffn_hidden, **options)

    def build_norm(self) -> nn.Module:
        """No final norm: the post-norm blocks end with one."""
        return nn.Identity()

    def embed_positions(self, h: Tensor, positions: Tensor | None) -> Tensor:
        """``projection(LayerNorm(h + P[positions]))``; positions ``0 .. T-1`` (these entries take no padding mask)."""
        if positions is None:
            positions = torch.arange(h.shape[1], device=h.device)
        out: Tensor = self.embed_projection(self.embed_norm(h + self.position_embedding(positions)))
        return out


_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def bert_config_fields(hf: Any) -> dict[str, Any]:
    """The :class:`EncoderConfig` fields of a transformers BERT-style config (FNet, Nystromformer): tied embeddings."""
    return {
        "d_model": hf.hidden_size,
        "n_layers": hf.num_hidden_layers,
        "d_ff": hf.intermediate_size,
        "vocab_size": hf.vocab_size,
        "max_len": hf.max_position_embeddings,
        "activation": hf.hidden_act,
        "norm_eps": hf.layer_norm_eps,
        "dropout": hf.hidden_dropout_prob,
        "tie_embeddings": True,
    }


def rename_encoder_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    embeddings: Mapping[str, str],
    layer_modules: Mapping[str, str],
    max_len: int,
    who: str,
    prefix: str,
    position_offset: int = 0,
    ignore: str = r"^(pooler|cls|classifier|qa_outputs|lm_head)\.|position_ids$|token_type_ids$",
) -> dict[str, Tensor]:
    """Rename a transformers BERT-style encoder's weights onto :class:`EncoderBackbone` (copies, never aliases).

    ``embeddings`` maps ``embeddings.<module>`` to ours; the position table becomes rows ``position_offset ..
    position_offset + max_len`` of the checkpoint's plus its token-type row 0 (every token has type 0 here).
    ``layer_modules`` maps ``encoder.layer.N.<module>`` to ``layers.N.<ours>``; unknown keys raise.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    sd = {k.removeprefix(prefix): v.detach().clone() for k, v in state_dict.items()}
    for key, value in sd.items():
        if re.search(ignore, key):
            continue
        if key.startswith("embeddings."):
            module, _, leaf = key.removeprefix("embeddings.").rpartition(".")
            if module in ("position_embeddings", "token_type_embeddings"):
                continue
            if module not in embeddings:
                unknown.append(key)
                continue
            out[f"{embeddings[module]}.{leaf}"] = value
            continue
        match = _LAYER.match(key)
        if match is None or match.group(2) not in layer_modules:
            unknown.append(key)
            continue
        index, module, leaf = match.groups()
        out[f"layers.{index}.{layer_modules[module]}.{leaf}"] = value
    if unknown:
        raise CheckpointError(f"{who} converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    positions = sd["embeddings.position_embeddings.weight"][position_offset : position_offset + max_len]
    if positions.shape[0] != max_len:
        raise CheckpointError(f"{who} converter: the checkpoint's position table has fewer than {max_len} rows")
    token_type = sd.get("embeddings.token_type_embeddings.weight")
    out["position_embedding.weight"] = positions + (token_type[0] if token_type is not None else 0.0)
    if "embed_tokens.weight" in out:  # the converters tie the LM head to the word embedding
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out
