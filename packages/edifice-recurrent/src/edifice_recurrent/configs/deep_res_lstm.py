"""Config and spec of ``deep_res_lstm``: slippi-ai's ``res_lstm`` core, pre-norm residual LSTM layers (torch-free).

The model is :class:`edifice_recurrent.deep_res_lstm.DeepResLSTM`; its equations are in
``docs/design/deep_res_lstm.md``.
"""

from __future__ import annotations

import dataclasses

from edifice import ArchSpec, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs
from edifice_recurrent.configs.transformer_like import NORMS, SLIPPI_AI

__all__ = ["SPECS", "DeepResLSTMConfig"]


@dataclasses.dataclass(kw_only=True)
class DeepResLSTMConfig(SequenceConfig):
    """``n_layers`` residual blocks ``h + Decoder(LSTM(Norm(h)))`` over a ``d_model`` residual stream."""

    arch: str = field("deep_res_lstm", "Registry name of the architecture this config builds.")
    d_model: int = field(128, "Width of the residual stream and of every LSTM (slippi-ai's hidden_size).")
    n_layers: int = field(1, "Number of residual LSTM blocks.")
    norm: str = field("layernorm", "Pre-norm of every block (and the final norm): 'layernorm' or 'rmsnorm'.")
    final_norm: bool = field(False, "Apply a norm to the last block's output (slippi-ai has none).")

    def validate(self) -> None:
        """Check the norm is known (plus the sequence-backbone checks)."""
        super().validate()
        self.check_choice("norm", NORMS)


SPECS = (
    ArchSpec(
        name="deep_res_lstm",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="slippi-ai's res_lstm: pre-norm residual LSTM blocks with zero-init decoders (start as the identity).",
        paper=SLIPPI_AI,
        config="edifice_recurrent.configs.deep_res_lstm:DeepResLSTMConfig",
        model="edifice_recurrent.deep_res_lstm:DeepResLSTM",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "d_in": 8},
        verification="oracle:docs/design/deep_res_lstm.md eqs. 1-4, an fp64 loop of torch.nn.LSTMCell steps",
        causal=True,
        stateful=True,
        variable_length=True,
        # One fused cuDNN/ATen LSTM call per layer is the point of the entry, and Dynamo graph-breaks on it.
        compile_fullgraph=False,
        reasons={
            "no_compile_fullgraph": "Dynamo does not trace torch.nn.LSTM (graph break; its allow_rnn is experimental)"
        },
    ),
)
