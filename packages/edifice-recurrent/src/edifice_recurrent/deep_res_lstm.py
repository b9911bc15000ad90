"""``deep_res_lstm``: slippi-ai's ``res_lstm`` core -- pre-norm residual LSTM blocks with zero-init decoders.

slippi-ai (vladfi1, https://github.com/vladfi1/slippi-ai), ``slippi_ai/tf/networks.py``: ``DeepResLSTM`` and its
``ResLSTMBlock`` (no paper; the equations are ``docs/design/deep_res_lstm.md``)::

    h^0 = W_enc x + b_enc                                       (1)  (input_proj; identity when d_in is None)
    a   = LSTM_l(N_l(h^{l-1}))                                  (2)  (width d_model, zero initial state)
    h^l = h^{l-1} + Dropout(W_dec,l a + b_dec,l)                (3)  (W_dec, b_dec start at zero)
    y   = N_out(h^L) if final_norm else h^L                     (4)

with ``torch.nn.LSTM``'s cell and ``N`` LayerNorm (or RMSNorm), eps 1e-6. Each block is a pre-norm
:class:`~edifice.blocks.transformer.TransformerBlock` without FFN whose mixer is
:class:`~edifice_recurrent._res_rnn.ProjectedRNN` (an :class:`~edifice_recurrent.rnn.RNNLayer` -- one fused
``torch.nn.LSTM`` call per layer -- and the decoder), the same block builder ``transformer_like`` uses.

Initialisation (slippi-ai's Sonnet modules at their defaults): the decoders start at zero ("initialize the resnet as
the identity function"), so the network starts as its encoder, ``y = h^0``; the encoder is ``snt.Linear``'s
(truncated normal with ``σ = 1/√fan_in``, zero bias) and each LSTM ``snt.LSTM``'s (truncated-normal input and
recurrent weights with ``σ = 1/√fan_in``, zero biases, forget-gate bias 1).

Deviations: LayerNorm eps 1e-6 (slippi-ai's TF LayerNorm has none); ``final_norm`` is the original Edifice's option
(off by default, as in slippi-ai).
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

import edifice
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.transformer import TransformerBlock
from edifice_recurrent._res_rnn import ProjectedRNN, output_norm, residual_rnn_block, sonnet_linear_, sonnet_rnn_, zero_
from edifice_recurrent.configs.deep_res_lstm import DeepResLSTMConfig

__all__ = ["DeepResLSTM"]


class DeepResLSTM(SequenceBackbone):
    """``n_layers`` residual blocks ``h + W_dec LSTM(Norm(h))`` over ``d_model`` features (slippi-ai's res_lstm)."""

    config_class: ClassVar[type[edifice.ArchConfig]] = DeepResLSTMConfig
    config: DeepResLSTMConfig

    def __init__(self, config: DeepResLSTMConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Block ``index``: ``h + Dropout(W_dec LSTM(Norm(h)) + b_dec)`` (eqs. 2-3)."""
        c = self.config
        mixer = ProjectedRNN("lstm", c.d_model)
        return residual_rnn_block(c.d_model, mixer, None, norm=c.norm, mixer_norm=True, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final norm when ``final_norm`` (eq. 4), else the identity (slippi-ai)."""
        return output_norm(self.config.norm, self.config.d_model, self.config.final_norm)

    def reset_parameters(self) -> None:
        """Sonnet's defaults for the encoder and the LSTMs, then slippi-ai's zero decoders (the network starts as its
        encoder)."""
        super().reset_parameters()  # visits each decoder's nn.Linear after its ProjectedRNN: zero it again last
        if isinstance(self.input_proj, nn.Linear):
            sonnet_linear_(self.input_proj)  # the encoder, snt.Linear(hidden_size)
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.mixer, ProjectedRNN)
            sonnet_rnn_(layer.mixer.rnn)  # snt.LSTM(hidden_size)
            zero_(layer.mixer.out_proj)
