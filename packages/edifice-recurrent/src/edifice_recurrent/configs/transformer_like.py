"""Config and spec of ``transformer_like``: slippi-ai's ``tx_like`` core, recurrent and FFN sub-layers (torch-free).

The model is :class:`edifice_recurrent.transformer_like.TransformerLike`; its equations are in
``docs/design/transformer_like.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["ACTIVATIONS", "NORMS", "SLIPPI_AI", "SPECS", "TransformerLikeConfig"]

#: Norms of the slippi-ai entries (``transformer_like``, ``deep_res_lstm``).
NORMS = ("layernorm", "rmsnorm")
#: Activations the FFN accepts (canonical names of ``edifice.blocks.activations``; slippi-ai offers the first three).
ACTIVATIONS = (
    "gelu",
    "relu",
    "tanh",
    "gelu_tanh",
    "silu",
    "relu2",
    "quick_gelu",
    "leaky_relu",
    "elu",
    "mish",
    "softplus",
    "sigmoid",
)


@dataclasses.dataclass(kw_only=True)
class TransformerLikeConfig(SequenceConfig):
    """``n_layers`` x (residual LSTM/GRU sub-layer, pre-norm residual FFN) over a ``d_model`` residual stream."""

    arch: str = field("transformer_like", "Registry name of the architecture this config builds.")
    d_model: int = field(128, "Width of the residual stream and of every recurrent cell (slippi-ai's hidden_size).")
    n_layers: int = field(1, "Number of (recurrent, FFN) layer pairs.")
    cell_type: Literal["lstm", "gru"] = field("lstm", "Recurrent cell of every layer: 'lstm' or 'gru'.")
    ffn_multiplier: int = field(4, "Hidden size of each FFN is ffn_multiplier * d_model.")
    activation: str = field("gelu", "Activation of the FFN (exact GELU, as tf.nn.gelu).")
    norm: str = field("layernorm", "Norm of the FFN (and recurrent, final) sub-layers: 'layernorm' or 'rmsnorm'.")
    recurrent_norm: bool = field(False, "Also pre-norm the recurrent sub-layer (slippi-ai has none there).")
    final_norm: bool = field(False, "Apply a norm to the last layer's output (slippi-ai has none).")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "ffw_multiplier": "ffn_multiplier",
        "recurrent_layer": "cell_type",
    }

    def validate(self) -> None:
        """Check the cell, norm and activation are known and the FFN is at least one unit wide."""
        super().validate()
        self.check_choice("cell_type", ("lstm", "gru"))
        self.check_choice("norm", NORMS)
        self.check_choice("activation", ACTIVATIONS)
        self.check_positive("ffn_multiplier")


#: slippi-ai has no paper: its ``slippi_ai/networks.py`` (TransformerLike, DeepResLSTM) is the reference.
SLIPPI_AI = Paper(
    "slippi-ai, slippi_ai/networks.py (TransformerLike 'tx_like', DeepResLSTM 'res_lstm')",
    "vladfi1 (Vlad Firoiu)",
    2020,
    url="https://github.com/vladfi1/slippi-ai",
)

SPECS = (
    ArchSpec(
        name="transformer_like",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="slippi-ai's tx_like: transformer layers whose attention is a residual LSTM/GRU, then a pre-norm FFN.",
        paper=SLIPPI_AI,
        config="edifice_recurrent.configs.transformer_like:TransformerLikeConfig",
        model="edifice_recurrent.transformer_like:TransformerLike",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "d_in": 8, "ffn_multiplier": 2},
        verification="oracle:docs/design/transformer_like.md eqs. 1-6, an fp64 loop of torch.nn.LSTMCell/GRUCell steps",
        causal=True,
        stateful=True,
        variable_length=True,
        # One fused cuDNN/ATen LSTM call per layer is the point of the entry, and Dynamo graph-breaks on it.
        compile_fullgraph=False,
        reasons={
            "no_compile_fullgraph": "Dynamo does not trace torch.nn.LSTM/GRU (graph break; its allow_rnn is "
            "experimental)"
        },
    ),
)
