"""Config of ``attention``: the multi-head self-attention model of Vaswani et al. (2017), causal (torch-free).

Shares :class:`~edifice_attention.configs.decoder_only.DecoderOnlyConfig`'s fields and the model class; only the
defaults differ: post-norm LayerNorm, a ReLU MLP of 4·d_model, biases everywhere, sinusoidal positions added to the
input, token embeddings scaled by sqrt(d_model), and multi-head attention (``n_kv_heads`` is fixed to ``n_heads``).
"""

from __future__ import annotations

import dataclasses

from edifice import field
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["AttentionConfig"]


@dataclasses.dataclass(kw_only=True)
class AttentionConfig(DecoderOnlyConfig):
    """Vaswani et al.'s transformer as a causal sequence model, with an optional sliding window (``window``)."""

    arch: str = field("attention", "Registry name of the architecture this config builds.")
    ffn: str = field("mlp", "Feed-forward kind: 'mlp' (paper eq. 2), 'swiglu', 'geglu' or 'reglu'.")
    activation: str = field("relu", "Activation of the 'mlp' feed-forward (ReLU in the paper).")
    norm: str = field("layernorm", "Normalisation: 'layernorm' (paper) or 'rmsnorm'.")
    norm_eps: float = field(1e-5, "Epsilon of every norm.")
    norm_position: str = field("post", "'post' (paper: LayerNorm(x + Sublayer(x))) or 'pre'.")
    attention_bias: bool = field(True, "Biases on the q/k/v/o projections.")
    ffn_bias: bool = field(True, "Biases on the feed-forward projections.")
    positional: str = field("sinusoidal", "Position information: 'sinusoidal' (paper §3.5), 'rope' or 'none'.")
    scale_embeddings: bool = field(True, "Multiply token embeddings by sqrt(d_model) (paper §3.4).")

    def validate(self) -> None:
        """Multi-head attention: every query head has its own key/value head."""
        super().validate()
        if self.n_kv_heads is not None and self.n_kv_heads != self.n_heads:
            self.fail("n_kv_heads", f"must equal n_heads={self.n_heads} (use 'gqa' for grouped-query attention)")
