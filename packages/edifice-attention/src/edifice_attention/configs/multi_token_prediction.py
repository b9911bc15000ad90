"""Config of ``multi_token_prediction``: a shared decoder_only trunk and ``n_predictions`` transformer-layer heads.

The model is :mod:`edifice_attention.multi_token_prediction` (Gloeckle et al. 2024, arXiv:2404.19737): the trunk is
the ``decoder_only`` stack (``n_layers`` blocks, every field of
:class:`~edifice_attention.configs.decoder_only.DecoderOnlyConfig` applies), head ``i`` is one more block of the same
kind applied to the trunk's output, and all heads share the final norm and the unembedding. Head 1 predicts the next
token, head ``i`` the token ``i`` positions ahead; the extra heads draft tokens for self-speculative decoding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs
from edifice.spec import TensorSpec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "MultiTokenPredictionConfig"]

GLOECKLE = Paper(
    "Better & Faster Large Language Models via Multi-token Prediction", "Gloeckle et al.", 2024, "2404.19737"
)

_T_OUT = "T if output == 'all' else None"


@dataclasses.dataclass(kw_only=True)
class MultiTokenPredictionConfig(DecoderOnlyConfig):
    """Multi-token prediction: ``P(x_{t+i} | x_{<=t}) = softmax(W_u norm(H_i(trunk(x))_t))`` for ``i = 1..n``."""

    arch: str = field("multi_token_prediction", "Registry name of the architecture this config builds.")
    vocab_size: int | None = field(256, "Vocabulary size: the heads predict tokens (required; None is rejected).")
    n_predictions: int = field(
        4, "Number n of output heads: head i (1-based) predicts the token i positions ahead; head 1 is next-token."
    )

    aliases: ClassVar[Mapping[str, str]] = {
        **DecoderOnlyConfig.aliases,
        "num_predictions": "n_predictions",
        "n_future_tokens": "n_predictions",
    }

    def validate(self) -> None:
        """The heads predict tokens, so ``vocab_size`` is required; at least one head."""
        super().validate()
        if self.vocab_size is None:
            self.fail("vocab_size", "is required: multi-token prediction predicts tokens (set an int, e.g. 256)")
        self.check_positive("n_predictions")


SPECS = (
    ArchSpec(
        name="multi_token_prediction",
        family="transformer",
        distribution="edifice-attention",
        summary="Multi-token prediction: a shared causal trunk, n transformer-layer heads predicting tokens t+1..t+n "
        "through one unembedding, a summed n-token loss, and self-speculative (blockwise parallel) greedy decoding.",
        paper=GLOECKLE,
        config="edifice_attention.configs.multi_token_prediction:MultiTokenPredictionConfig",
        model="edifice_attention.multi_token_prediction:MultiTokenPrediction",
        tiny={
            "d_model": 32,
            "n_layers": 1,
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_ff": 48,
            "vocab_size": 64,
            "n_predictions": 3,
        },
        inputs=sequence_inputs(),
        outputs={
            "logits": TensorSpec(("B", _T_OUT, "vocab_size"), doc="Next-token logits (head 1)."),
            "head_logits": TensorSpec(
                ("B", _T_OUT, "n_predictions", "vocab_size"),
                doc="Logits of every head; [..., i - 1, :] predicts the token i positions ahead.",
            ),
            "aux_loss": TensorSpec((), when="n_experts > 0", doc="MoE load-balancing loss, already weighted."),
        },
        causal=True,
        stateful=True,
        variable_length=True,
        verification="oracle:eq. 3-4 in fp64 (head i = trunk -> its own layer -> shared norm and unembedding, "
        "scoring x_{t+i}); also tested: eq. 2 loss by hand, speculative decoding = greedy",
    ),
)
