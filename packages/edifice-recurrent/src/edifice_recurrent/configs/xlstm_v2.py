"""Config and spec of ``xlstm_v2``: the xLSTM 7B language model of Beck et al. (2025), torch-free.

xLSTM 7B is an mLSTM-only stack of post-up-projection blocks (mLSTM layer, then a SwiGLU feed-forward) with RMSNorm,
soft-capped gate pre-activations and soft-capped output logits, trained from a negative input-gate bias. The config
extends :class:`~edifice_recurrent.configs.xlstm.XLSTMConfig` (same mLSTM layer fields) with the logit cap and the
7B initialisation; ``slstm_at`` is fixed to ``()``. See :mod:`edifice_recurrent.xlstm_v2` and docs/design/xlstm_v2.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Converter, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_recurrent.configs.xlstm import XLSTMConfig

__all__ = ["BECK_7B", "CONVERTERS", "SPECS", "XLSTMV2Config"]

BECK_7B = Paper(
    "xLSTM 7B: A Recurrent LLM for Fast and Efficient Inference",
    "Beck, Pöppel, Lippe, Kurle, Blies, Klambauer, Böck & Hochreiter",
    2025,
    "2503.13427",
)


@dataclasses.dataclass(kw_only=True)
class XLSTMV2Config(XLSTMConfig):
    """xLSTM 7B: mLSTM blocks + SwiGLU, RMSNorm, soft-capped gates (15) and logits (30), input-gate bias -10."""

    arch: str = field("xlstm_v2", "Registry name of the architecture this config builds.")
    slstm_at: tuple[int, ...] | None = field((), "No sLSTM blocks: xLSTM 7B is mLSTM-only (fixed for this entry).")
    logit_soft_cap: float | None = field(
        30.0, "Soft-cap the LM head's logits to cap*tanh(logits/cap) (xLSTM 7B §3.2); None: off."
    )
    igate_bias_init: float = field(
        -10.0, "Initial input-gate bias of every head (xLSTM 7B §3.2: strongly negative, for stable training)."
    )

    aliases: ClassVar[Mapping[str, str]] = {
        **XLSTMConfig.aliases,
        "num_hidden_layers": "n_layers",
        "output_logit_soft_cap": "logit_soft_cap",
    }

    def validate(self) -> None:
        """The xLSTM checks, no sLSTM block, and a positive logit cap."""
        super().validate()
        if self.slstm_at != ():
            self.fail("slstm_at", "must be () for xlstm_v2: xLSTM 7B has mLSTM blocks only (use 'xlstm' for sLSTM)")
        self.check_positive("logit_soft_cap")


# One block (as mlstm): the compile check traces every block; the parity tests use two.
_TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_multiple_of": 8, "chunk_size": 8, "vocab_size": 64}

SPECS = (
    ArchSpec(
        name="xlstm_v2",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="xLSTM 7B: mLSTM-only LM with post-up-projection blocks, RMSNorm, soft-capped gates and logits.",
        paper=BECK_7B,
        config="edifice_recurrent.configs.xlstm_v2:XLSTMV2Config",
        model="edifice_recurrent.xlstm_v2:XLSTMV2",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny=_TINY,
        defaults={"slstm_at": ()},
        fixed=("slstm_at",),
        verification="parity:transformers.xLSTMForCausalLM",
        interop=("transformers.xLSTMForCausalLM",),
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)

CONVERTERS = (
    Converter(
        "transformers.xLSTMForCausalLM",
        "xlstm_v2",
        "edifice_recurrent.xlstm_v2:from_transformers",
        "xLSTM 7B language models (weight_mode 'single' or 'fused'): input_ids -> soft-capped logits.",
    ),
)
