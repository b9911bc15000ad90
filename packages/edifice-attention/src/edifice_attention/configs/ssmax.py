"""Config of ``ssmax``: Scalable-Softmax attention, ``softmax((s log n) z)`` with a learnable ``s`` per head.

The model is :mod:`edifice_attention.ssmax`: the ``decoder_only`` stack whose attention logits of a query that sees
``n`` keys are multiplied by ``s log n`` (Nakanishi 2025) (torch-free).
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "SSMaxConfig"]

NAKANISHI = Paper("Scalable-Softmax Is Superior for Attention", "Nakanishi", 2025, "2501.19399")


@dataclasses.dataclass(kw_only=True)
class SSMaxConfig(DecoderOnlyConfig):
    """SSMax: ``z_i -> n^{s z_i} / sum_j n^{s z_j}`` over the ``n`` keys a query sees; ``s`` learnable per head."""

    arch: str = field("ssmax", "Registry name of the architecture this config builds.")
    ssmax_s_init: float = field(0.43, "Initial value of every head's scaling parameter s (the paper's Figure 1 s).")
    ssmax_bias: bool = field(False, "Learnable per-head bias b: logits scaled by s log n + b (the paper's §3 variant).")


SPECS = (
    variant_spec(
        "ssmax",
        "Scalable-Softmax attention: logits scaled by s*log(n), n the keys a query sees (no attention fading).",
        NAKANISHI,
        config="edifice_attention.configs.ssmax:SSMaxConfig",
        model="edifice_attention.ssmax:SSMax",
        tiny={"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "vocab_size": 64},
        verification="oracle:Nakanishi 2025 eq. 3 (n^{s z} / sum n^{s z}) on hand-made scores and an fp64 layer oracle",
    ),
)
