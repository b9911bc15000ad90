"""FNet: a Transformer encoder whose self-attention is replaced by an unparameterised 2-D Fourier transform.

Paper: Lee-Thorp, Ainslie, Eckstein & Ontanon (2022), "FNet: Mixing Tokens with Fourier Transforms", NAACL 2022,
https://arxiv.org/abs/2105.03824.

Implemented:

* §3.2, eq. (3), the Fourier sublayer: ``y = Re(F_seq(F_hidden(x)))`` -- a 1-D DFT along the hidden axis, then
  along the sequence axis, keeping the real part (:func:`fourier_mix`, ``torch.fft.fft2`` in fp32, cast back).
* §3.2 and Fig. 1, the encoder block: ``h = LayerNorm(x + Fourier(x))``, ``y = LayerNorm(h + FF(h))`` (post-norm,
  as in the original Transformer), with the GELU MLP ``FF``; learned absolute positions and an embedding LayerNorm
  followed by a dense "projection" layer, as in the authors' released code and transformers' ``FNetModel`` (the
  shared :class:`~edifice_attention._encoder.EncoderBackbone`).

FNet is an encoder: every position reads the whole sequence, and the FFT also reads padding (the DFT is over the
padded length), so the entry takes no ``attention_mask`` and has no decoding state.

Deviations: the token-type embedding of BERT/FNet is not modelled (the converter adds its row 0 to the position
table, which is what a single-segment input computes); the pooler and pre-training heads are not part of the
backbone; dropout (``config.dropout``) also applies to the Fourier branch (the released code has none there; eval
outputs are identical). The DFT is computed by the FFT for every length (the paper's TPU code switches to DFT matrix
products for short sequences; the result is the same up to rounding).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice.dtypes import compute_dtype
from edifice_attention._encoder import EncoderBackbone, bert_config_fields, rename_encoder_state_dict
from edifice_attention._hf_convert import load_converted
from edifice_attention.configs.fnet import FNetConfig

__all__ = ["FNet", "FourierMixer", "fourier_mix", "from_fnet"]


def fourier_mix(x: Tensor) -> Tensor:
    """Eq. (3): ``Re(F_seq(F_hidden(x)))`` for ``x [B, T, d]``, computed in fp32 (fp64 for fp64) and cast back."""
    mixed: Tensor = torch.fft.fft2(x.to(compute_dtype(x)), dim=(-2, -1)).real
    return mixed.to(x.dtype)


class FourierMixer(nn.Module):
    """The parameter-free Fourier sublayer (the sequence-mixer protocol; no padding mask, no state)."""

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d] -> [B, T, d]``."""
        if state is not None:
            raise TypeError("FourierMixer: FNet is bidirectional and has no decoding state")
        if mask is not None:
            raise ValueError("FourierMixer: the FFT mixes every position of the padded length; no attention_mask")
        return fourier_mix(x)


class FNet(EncoderBackbone):
    """FNet encoder: embeddings, post-norm blocks of :class:`FourierMixer` and a GELU MLP."""

    config_class: ClassVar[type[ArchConfig]] = FNetConfig
    config: FNetConfig

    def build_mixer(self, index: int) -> nn.Module:
        """The Fourier sublayer (the same at every depth)."""
        return FourierMixer()

    def build_embed_projection(self) -> nn.Module:
        """The released FNet's dense layer after the embedding LayerNorm (identity when turned off)."""
        return nn.Linear(self.config.d_model, self.config.d_model) if self.config.embed_projection else nn.Identity()


# -- transformers checkpoints ---------------------------------------------------------------------------------------
_EMBEDDINGS = {"word_embeddings": "embed_tokens", "LayerNorm": "embed_norm", "projection": "embed_projection"}
_LAYER_MODULES = {
    "fourier.output.LayerNorm": "mixer_norm",
    "intermediate.dense": "ffn.up_proj",
    "output.dense": "ffn.down_proj",
    "output.LayerNorm": "ffn_norm",
}


def fnet_config(hf: Any, **overrides: Any) -> FNetConfig:
    """The :class:`FNetConfig` of a transformers ``FNetConfig`` (token ids in, last hidden state out)."""
    return FNetConfig(**{**bert_config_fields(hf), **overrides})


def from_fnet(source: Any, **overrides: Any) -> FNet:
    """Convert transformers' ``FNetModel`` (or a task model holding one; a model or ``(config, state_dict)``).

    The result maps ``input_ids`` to logits ``h Eᵀ`` through the tied word embedding ``E``, where ``h`` is
    ``FNetModel``'s ``last_hidden_state`` (token type 0); the pooler and the MLM head's transform layer are dropped
    (``model.lm_head = nn.Identity()`` returns ``h`` itself).
    """
    if isinstance(source, tuple) and len(source) == 2:
        hf, state_dict = source
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf, state_dict = source.config, source.state_dict()
    else:
        raise TypeError(f"FNet converter: source must be a model or (config, state_dict), got {type(source)}")
    config = fnet_config(hf, **overrides)
    prefix = "fnet." if any(k.startswith("fnet.") for k in state_dict) else ""
    weights = rename_encoder_state_dict(
        {k: v for k, v in state_dict.items() if k.startswith(prefix)},
        embeddings=_EMBEDDINGS,
        layer_modules=_LAYER_MODULES,
        max_len=config.max_len,
        who="FNet",
        prefix=prefix,
    )
    return load_converted(FNet, config, weights, who="FNet")
