"""Config of ``softpick``: attention with the rectified softmax ``ReLU(e^x - 1) / sum |e^x - 1|`` (torch-free).

The model is :mod:`edifice_attention.softpick`: the ``decoder_only`` stack with softpick attention weights
(Zuhri et al. 2025).
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "SoftpickConfig"]

ZUHRI = Paper(
    "Softpick: No Attention Sink, No Massive Activations with Rectified Softmax", "Zuhri et al.", 2025, "2504.20966"
)


@dataclasses.dataclass(kw_only=True)
class SoftpickConfig(DecoderOnlyConfig):
    """Softpick attention: weights ``ReLU(e^s - 1) / (sum_j |e^s_j - 1| + eps)``; rows need not sum to one."""

    arch: str = field("softpick", "Registry name of the architecture this config builds.")

    def validate(self) -> None:
        """Soft-capping and attention dropout are softmax options."""
        super().validate()
        if self.softcap is not None:
            self.fail("softcap", "applies to softmax attention only (None here)")
        if self.attention_dropout:
            self.fail("attention_dropout", "is not supported by softpick attention (0.0 here)")


SPECS = (
    variant_spec(
        "softpick",
        "Softpick attention: rectified softmax ReLU(e^x - 1)/sum|e^x - 1| weights (no attention sink).",
        ZUHRI,
        # qk-norm keeps the tiny model's logits O(1): at N(0, 0.02) weights they are ~1e-3, where softpick's
        # ReLU(s)/sum|s| is a ratio of rounding-sized numbers under bf16 autocast (docs/design/attention_variants.md).
        tiny={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "vocab_size": 64, "qk_norm": True},
        verification="oracle:Zuhri et al. 2025 eq. 3 on hand-made scores and an fp64 layer oracle",
    ),
)
