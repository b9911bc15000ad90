"""``transformer_like``: slippi-ai's ``tx_like`` core -- transformer layers whose attention is an LSTM or GRU.

slippi-ai (vladfi1, https://github.com/vladfi1/slippi-ai), ``slippi_ai/tf/networks.py``: ``TransformerLike``, the
recurrent core of its Super Smash Bros. Melee agents (no paper; the equations are ``docs/design/transformer_like.md``).
A transformer's layout with the self-attention sub-layer replaced by a recurrent cell, so the stack is causal, decodes
in constant memory per frame, and trains as one fused cuDNN call per layer::

    h^0 = W_enc x + b_enc                                       (1)  (input_proj; identity when d_in is None)
    a   = RNN_l(N^r_l(h^{l-1}))                                 (2)  (LSTM/GRU of width d_model; N^r = identity
    g   = h^{l-1} + Dropout(a)                                  (3)   unless recurrent_norm)
    f   = W2_l act(W1_l N_l(g) + b1_l) + b2_l                   (4)  (W1: d -> ffn_multiplier·d; W2, b2 start at 0)
    h^l = g + Dropout(f)                                        (5)
    y   = N_out(h^L) if final_norm else h^L                     (6)

with the LSTM/GRU of ``torch.nn.LSTM``/``nn.GRU`` (see :mod:`edifice_recurrent.rnn`) and ``N`` LayerNorm (or RMSNorm),
eps 1e-6. Each layer is a pre-norm :class:`~edifice.blocks.transformer.TransformerBlock` with the recurrent mixer
:class:`~edifice_recurrent.rnn.RNNLayer` and a :class:`~edifice.blocks.ffn.FeedForward`
(:func:`edifice_recurrent._res_rnn.residual_rnn_block`, shared with ``deep_res_lstm``).

Initialisation (slippi-ai's TensorFlow ``TransformerLike``, whose exact GELU this entry follows, with its Sonnet
modules at their defaults): the encoder and each FFN's first projection are ``snt.Linear``'s (truncated normal with
``σ = 1/√fan_in``, zero bias); each cell ``snt.LSTM``'s or ``snt.GRU``'s (truncated-normal input and recurrent weights
with ``σ = 1/√fan_in``, zero biases, the LSTM's forget-gate bias 1); ``ResBlock`` zero-initialises the FFN's output
projection, so every FFN sub-layer starts as the identity. (The JAX port uses Flax's defaults -- LeCun-normal input
weights, orthogonal recurrent ones, no forget bias -- and the tanh GELU.)

Deviations: LayerNorm has eps 1e-6 (slippi-ai's TF LayerNorm has none); ``recurrent_norm`` and ``final_norm`` are the
original Edifice's options (both off by default, as in slippi-ai).
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

import edifice
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import FeedForward
from edifice.blocks.transformer import TransformerBlock
from edifice_recurrent._res_rnn import output_norm, residual_rnn_block, sonnet_linear_, sonnet_rnn_, zero_
from edifice_recurrent.configs.transformer_like import TransformerLikeConfig
from edifice_recurrent.rnn import RNNLayer

__all__ = ["TransformerLike"]


class TransformerLike(SequenceBackbone):
    """``n_layers`` x (``h + RNN(N^r(h))``, ``h + FFN(Norm(h))``) over ``d_model`` features (slippi-ai's tx_like)."""

    config_class: ClassVar[type[edifice.ArchConfig]] = TransformerLikeConfig
    config: TransformerLikeConfig

    def __init__(self, config: TransformerLikeConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index``: a residual recurrent sub-layer then a pre-norm residual FFN (eqs. 2-5)."""
        c = self.config
        mixer = RNNLayer(c.cell_type, c.d_model, c.d_model)
        ffn = FeedForward(c.d_model, c.ffn_multiplier * c.d_model, activation=c.activation)
        return residual_rnn_block(c.d_model, mixer, ffn, norm=c.norm, mixer_norm=c.recurrent_norm, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final norm when ``final_norm`` (eq. 6), else the identity (slippi-ai)."""
        return output_norm(self.config.norm, self.config.d_model, self.config.final_norm)

    def reset_parameters(self) -> None:
        """Sonnet's defaults for the encoder, the cells and the FFNs' first projections, then slippi-ai's zero FFN
        output projections (each FFN starts as the identity)."""
        super().reset_parameters()
        if isinstance(self.input_proj, nn.Linear):
            sonnet_linear_(self.input_proj)  # the encoder, snt.Linear(hidden_size)
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.ffn, FeedForward)
            assert isinstance(layer.mixer, RNNLayer)
            sonnet_rnn_(layer.mixer)  # snt.LSTM / snt.GRU(hidden_size)
            sonnet_linear_(layer.ffn.up_proj)
            zero_(layer.ffn.down_proj)
