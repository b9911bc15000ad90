"""Config fields shared by the BERT-style bidirectional encoders (``fnet``, ``nystromformer``): torch-free.

A post-norm stack (``LayerNorm(x + Sublayer(x))``) of a token mixer and a GELU MLP, with learned absolute positions
and a LayerNorm on the embeddings, as BERT and the transformers models these entries are proven against. The entries
are non-causal and have no decoding state; FFT mixing and segment-means landmarks read padding, so neither takes an
``attention_mask``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_attention.configs._linear_attention import MixerStackConfig

__all__ = ["MIN_POSITIONS", "EncoderConfig", "encoder_spec"]

#: Smallest accepted position table (edifice's example and fuzz sequences have 8 positions).
MIN_POSITIONS = 8


@dataclasses.dataclass(kw_only=True)
class EncoderConfig(MixerStackConfig):
    """Post-norm encoder blocks (mixer, GELU MLP), learned positions and an embedding LayerNorm."""

    norm: str = field("layernorm", "Norm of the residual blocks and of the embeddings: 'layernorm' or 'rmsnorm'.")
    norm_eps: float = field(1e-12, "Epsilon of every norm (BERT's 1e-12).")
    ffn: str = field("mlp", "Feed-forward kind of each block (the papers: 'mlp', a GELU MLP).")
    activation: str = field("gelu", "Activation of the MLP ('gelu'; 'gelu_new'/'gelu_tanh' is the tanh form).")
    max_len: int = field(512, "Rows of the learned absolute position table: the longest sequence accepted.")

    aliases: ClassVar[Mapping[str, str]] = {
        **MixerStackConfig.aliases,
        "max_position_embeddings": "max_len",
        "hidden_act": "activation",
        "layer_norm_eps": "norm_eps",
        "window_size": "max_len",
        "seq_len": "max_len",
    }

    def validate(self) -> None:
        """A positive position table and a known activation."""
        super().validate()
        self.check_positive("max_len")
        if self.max_len < MIN_POSITIONS:
            self.fail("max_len", f"must be >= {MIN_POSITIONS}: the learned position table bounds the sequence length")
        self.check_activation("activation")

    def default_d_ff(self) -> int:
        """BERT's 4 · d_model (for every FFN kind)."""
        return 4 * self.d_model


def encoder_spec(name: str, config: str, model: str, summary: str, paper: Paper, **extra: object) -> ArchSpec:
    """The spec shared by the encoders: bidirectional, no decoding state, no padding mask (see the module doc)."""
    inputs = {k: v for k, v in sequence_inputs().items() if k != "attention_mask"}
    reasons = {
        "causal": "bidirectional encoder: every position reads the whole sequence",
        "stateful": "bidirectional encoder: there is no left-to-right decoding state",
        "variable_length": "the mixer reads every position of the padded length, so it takes no attention_mask",
    }
    reasons.update(extra.pop("reasons", {}))  # type: ignore[call-overload]
    return ArchSpec(
        name=name,
        family="attention",
        distribution="edifice-attention",
        summary=summary,
        paper=paper,
        config=config,
        model=model,
        inputs=inputs,
        outputs=sequence_outputs(),
        causal=False,
        stateful=False,
        variable_length=False,
        reasons=reasons,
        **extra,  # type: ignore[arg-type]
    )
