"""Nyströmformer: a Transformer encoder whose softmax attention is approximated with the Nyström method.

Paper: Xiong, Zeng, Chakraborty, Tan, Fung, Li & Singh (2021), "Nyströmformer: A Nyström-Based Algorithm for
Approximating Self-Attention", AAAI 2021, https://arxiv.org/abs/2102.03902.

Implemented (per head, ``q = x W_Q / d^{1/4}``, ``k = x W_K / d^{1/4}``, ``v = x W_V``):

* eq. (14), the Nyström approximation ``Ŝ V = softmax(q k̃ᵀ) (softmax(q̃ k̃ᵀ))⁺ softmax(q̃ kᵀ) V`` with the
  segment-means landmarks of eq. (12) and the iterative pseudo-inverse of eq. (16) (``pinv_iters = 6``, the paper's
  initialisation ``Z₀ = Aᵀ / (‖A‖₁‖A‖_∞)``): :func:`edifice.ops.nystrom_attention`;
* §4 ("our implementation"), the skip connection of the values through a depthwise convolution along the sequence,
  one kernel of ``conv_kernel_size`` taps per head (the authors' code and transformers' ``conv``), added to the
  approximate attention output before the output projection;
* the BERT-style post-norm encoder around it (:class:`~edifice_attention._encoder.EncoderBackbone`).

When ``T <= num_landmarks`` every position is its own landmark and the layer computes exact softmax attention
(through :func:`edifice.ops.sdpa`), as the authors' code and transformers do for ``num_landmarks == seq_len``.

Deviations: ``‖A‖₁`` of the pseudo-inverse's initialisation is taken per batch row and head (the paper's formula);
the authors' code and transformers' default take the maximum over the whole batch, which makes samples depend on
each other (transformers' other option is ours; the parity test uses it). Any ``T`` works: when ``m`` does not divide
``T`` the segments differ in length by one (the paper and transformers require ``T = m · l``; equal for those).
There is no padding mask (segment means mix padding into the landmarks), no token-type embedding (the converter folds
row 0 into the position table) and no attention-probability dropout.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from edifice import ops
from edifice.config import ArchConfig
from edifice_attention._encoder import EncoderBackbone, bert_config_fields, rename_encoder_state_dict
from edifice_attention._hf_convert import load_converted
from edifice_attention.configs.nystromformer import NystromformerConfig

__all__ = ["NystromAttention", "Nystromformer", "from_nystromformer"]


class NystromAttention(nn.Module):
    """Multi-head Nyström attention with the depthwise value convolution (the sequence-mixer protocol; no state)."""

    def __init__(self, config: NystromformerConfig) -> None:
        super().__init__()
        c = config
        self.n_heads = c.n_heads
        self.head_dim = c.d_model // c.n_heads
        self.num_landmarks = c.num_landmarks
        self.pinv_iters = c.pinv_iters
        self.q_proj = nn.Linear(c.d_model, c.d_model)
        self.k_proj = nn.Linear(c.d_model, c.d_model)
        self.v_proj = nn.Linear(c.d_model, c.d_model)
        self.o_proj = nn.Linear(c.d_model, c.d_model)
        ks = c.conv_kernel_size
        self.conv = (
            nn.Conv2d(c.n_heads, c.n_heads, (ks, 1), padding=(ks // 2, 0), groups=c.n_heads, bias=False) if ks else None
        )

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation (the backbone then applies BERT's normal(0, 0.02) to the linears)."""
        for module in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.conv):
            if module is not None:
                module.reset_parameters()

    def _heads(self, proj: nn.Linear, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        heads: Tensor = proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        return heads

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``."""
        if state is not None:
            raise TypeError("NystromAttention: Nyströmformer is bidirectional and has no decoding state")
        if mask is not None:
            raise ValueError("NystromAttention: segment-means landmarks read padding; no attention_mask")
        B, T, _ = x.shape
        quarter = self.head_dim**-0.25  # q kᵀ / √d, split between q and k as the paper's code does
        q, k, v = (
            self._heads(self.q_proj, x) * quarter,
            self._heads(self.k_proj, x) * quarter,
            self._heads(self.v_proj, x),
        )
        if self.num_landmarks >= T:  # every position is a landmark: exact softmax attention
            out = ops.sdpa(q, k, v, scale=1.0)
        else:
            out = ops.nystrom_attention(q, k, v, num_landmarks=self.num_landmarks, pinv_iters=self.pinv_iters)
        if self.conv is not None:
            out = out + self.conv(v)  # (B, H, T, D): a depthwise convolution of each head's values along T
        y: Tensor = self.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        return y


class Nystromformer(EncoderBackbone):
    """Nyströmformer encoder: embeddings, post-norm blocks of :class:`NystromAttention` and a GELU MLP."""

    config_class: ClassVar[type[ArchConfig]] = NystromformerConfig
    config: NystromformerConfig

    def build_mixer(self, index: int) -> nn.Module:
        """Nyström attention (the same at every depth)."""
        return NystromAttention(self.config)


# -- transformers checkpoints ---------------------------------------------------------------------------------------
_EMBEDDINGS = {"word_embeddings": "embed_tokens", "LayerNorm": "embed_norm"}
_LAYER_MODULES = {
    "attention.self.query": "mixer.q_proj",
    "attention.self.key": "mixer.k_proj",
    "attention.self.value": "mixer.v_proj",
    "attention.self.conv": "mixer.conv",
    "attention.output.dense": "mixer.o_proj",
    "attention.output.LayerNorm": "mixer_norm",
    "intermediate.dense": "ffn.up_proj",
    "output.dense": "ffn.down_proj",
    "output.LayerNorm": "ffn_norm",
}


def nystromformer_config(hf: Any, **overrides: Any) -> NystromformerConfig:
    """The :class:`NystromformerConfig` of a transformers ``NystromformerConfig`` (token ids in, tied logits out)."""
    fields = {
        **bert_config_fields(hf),
        "n_heads": hf.num_attention_heads,
        "num_landmarks": hf.num_landmarks,
        "conv_kernel_size": hf.conv_kernel_size,
    }
    return NystromformerConfig(**{**fields, **overrides})


def from_nystromformer(source: Any, **overrides: Any) -> Nystromformer:
    """Convert transformers' ``NystromformerModel`` (or a task model; a model or ``(config, state_dict)``).

    The result maps ``input_ids`` to logits ``h Eᵀ`` through the tied word embedding ``E``, ``h`` being the model's
    ``last_hidden_state`` for inputs of ``segment_means_seq_len`` tokens (token type 0); ``model.lm_head =
    nn.Identity()`` returns ``h``. Pseudo-inverse initialisation: see the module's deviations.
    """
    if isinstance(source, tuple) and len(source) == 2:
        hf, state_dict = source
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf, state_dict = source.config, source.state_dict()
    else:
        raise TypeError(f"Nystromformer converter: source must be a model or (config, state_dict), got {type(source)}")
    config = nystromformer_config(hf, **overrides)
    prefix = "nystromformer." if any(k.startswith("nystromformer.") for k in state_dict) else ""
    weights = rename_encoder_state_dict(
        {k: v for k, v in state_dict.items() if k.startswith(prefix)},
        embeddings=_EMBEDDINGS,
        layer_modules=_LAYER_MODULES,
        max_len=config.max_len,
        who="Nystromformer",
        prefix=prefix,
        position_offset=2,  # transformers' position ids start at 2
    )
    return load_converted(Nystromformer, config, weights, who="Nystromformer")
