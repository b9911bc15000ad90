"""Config of ``gated_attention``: softmax attention with a head-specific sigmoid output gate (Qiu et al. 2025).

The model is :mod:`edifice_attention.gated_attention`, the ``decoder_only`` stack whose attention multiplies each
head's output elementwise by ``sigmoid(x W_θ)`` before ``o_proj`` (the paper's G1 position). Defaults follow the
paper's Qwen3-style baselines: qk-norm on, grouped key/value heads optional.
"""

from __future__ import annotations

import dataclasses

from edifice import Converter, Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["CONVERTERS", "SPECS", "GatedAttentionConfig"]

QIU = Paper(
    "Gated Attention for Large Language Models: Non-linearity, Sparsity, and Attention-Sink-Free",
    "Qiu et al.",
    2025,
    "2505.06708",
)


@dataclasses.dataclass(kw_only=True)
class GatedAttentionConfig(DecoderOnlyConfig):
    """Gated attention: ``Y' = SDPA(Q, K, V) ⊙ sigmoid(X W_θ)`` per head and channel, then ``o_proj``."""

    arch: str = field("gated_attention", "Registry name of the architecture this config builds.")
    qk_norm: bool = field(True, "RMS-normalise queries and keys per head before RoPE (the paper's Qwen3 baselines).")


SPECS = (
    variant_spec(
        "gated_attention",
        "Gated attention (G1): each head's SDPA output times an elementwise sigmoid gate of the input, then o_proj.",
        QIU,
        tiny={"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "vocab_size": 64},
        verification="parity:transformers.Qwen3NextForCausalLM",
        interop=("transformers.Qwen3NextForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.Qwen3NextForCausalLM",
        "gated_attention",
        "edifice_attention.gated_attention:from_qwen3_next",
        "Qwen3-Next checkpoints whose layers are all full (gated) attention with dense MLPs.",
    ),
)
