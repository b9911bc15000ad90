"""Residual recurrent layers shared by ``transformer_like`` and ``deep_res_lstm`` (slippi-ai's tx_like, res_lstm).

Both stack pre-norm residual blocks (:class:`edifice.blocks.transformer.TransformerBlock`) whose mixer is a recurrent
layer, :class:`edifice_recurrent.rnn.RNNLayer` -- one fused ``torch.nn.LSTM``/``nn.GRU`` call per layer over the
sequence, ``init_state``/``state=`` for decoding, padding handled by moving valid tokens first:

* ``transformer_like``: ``h + RNN(N^r(h))`` then ``h + W2 act(W1 Norm(h))`` (``N^r`` the identity unless
  ``recurrent_norm``), see ``docs/design/transformer_like.md``;
* ``deep_res_lstm``: ``h + W_dec LSTM(Norm(h))`` with :class:`ProjectedRNN` as the mixer, see
  ``docs/design/deep_res_lstm.md``.

slippi-ai zero-initialises the output projection of every residual branch it adds (``ResBlock``'s second linear,
``ResLSTMBlock``'s decoder: "initialize the resnet as the identity function"); :func:`zero_` does that.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice_recurrent.rnn import RNNLayer, RNNLayerState

__all__ = ["NORM_EPS", "ProjectedRNN", "output_norm", "residual_rnn_block", "sonnet_linear_", "sonnet_rnn_", "zero_"]

#: Epsilon of every norm of the slippi-ai entries (slippi-ai's JAX LayerNorm; its TF one has none).
NORM_EPS = 1e-6


def _truncated_normal_(weight: Tensor, fan_in: int) -> None:
    """TensorFlow's ``truncated_normal`` with ``σ = 1/√fan_in``: a normal redrawn outside ``±2σ`` (std ``0.88σ``)."""
    std = fan_in**-0.5
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


@torch.no_grad()
def sonnet_linear_(linear: nn.Linear) -> None:
    """Sonnet's ``snt.Linear`` default: weights truncated normal with ``σ = 1/√fan_in``, zero bias."""
    _truncated_normal_(linear.weight, linear.in_features)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


@torch.no_grad()
def sonnet_rnn_(layer: RNNLayer) -> None:
    """Sonnet's ``snt.LSTM``/``snt.GRU`` defaults on a one-layer cell: truncated-normal input and recurrent weights
    (``σ = 1/√input_size``, ``1/√hidden_size``), zero biases, and the LSTM's ``forget_bias=1.0`` added to the forget
    gate's bias (PyTorch's gate order is i, f, g, o)."""
    cell = layer.module()
    weights = dict(cell.named_parameters())  # weight_ih_l0 [G·h, d_in], weight_hh_l0 [G·h, h], bias_ih_l0, bias_hh_l0
    _truncated_normal_(weights["weight_ih_l0"], cell.input_size)
    _truncated_normal_(weights["weight_hh_l0"], cell.hidden_size)
    for name in ("bias_ih_l0", "bias_hh_l0"):
        if name in weights:
            nn.init.zeros_(weights[name])
    if isinstance(cell, nn.LSTM) and "bias_ih_l0" in weights:
        weights["bias_ih_l0"][cell.hidden_size : 2 * cell.hidden_size] = 1.0


def zero_(linear: nn.Linear) -> None:
    """Zero a residual branch's output projection (weight and bias), so the branch starts as the identity."""
    nn.init.zeros_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class ProjectedRNN(nn.Module):
    """An LSTM/GRU layer followed by a linear decoder, ``x [B, T, d] -> [B, T, d]`` (slippi-ai's ResLSTMBlock body).

    Follows the sequence-mixer protocol (``mask``/``positions``/``state`` as :class:`RNNLayer`); the decoder starts at
    zero.
    """

    def __init__(self, cell_type: str, d_model: int) -> None:
        super().__init__()
        self.rnn = RNNLayer(cell_type, d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's cell initialisation and slippi-ai's zero decoder."""
        self.rnn.reset_parameters()
        zero_(self.out_proj)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d]`` -> ``W_dec RNN(x) + b_dec`` ``[B, T, d]``; ``state`` (:class:`RNNLayerState`) continues."""
        out: Tensor = self.out_proj(self.rnn(x, mask=mask, positions=positions, state=state))
        return out

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RNNLayerState:
        """The cell's zero ``(h_0, c_0)`` (constant size whatever ``max_len``)."""
        return self.rnn.init_state(batch_size, max_len=max_len, device=device, dtype=dtype)


def residual_rnn_block(
    d_model: int,
    mixer: nn.Module,
    ffn: nn.Module | None,
    *,
    norm: str,
    mixer_norm: bool,
    dropout: float,
) -> TransformerBlock:
    """A pre-norm :class:`TransformerBlock` around a recurrent ``mixer``; ``mixer_norm=False`` drops the mixer's norm.

    ``h = h + Dropout(mixer(N(h)))`` then, with an ``ffn``, ``h = h + Dropout(ffn(Norm(h)))``, where ``N`` is ``Norm``
    or (``mixer_norm=False``, slippi-ai's ``tx_like``) the identity.
    """
    block = TransformerBlock(d_model, mixer, ffn, norm=norm, norm_eps=NORM_EPS, norm_position="pre", dropout=dropout)
    if not mixer_norm:
        block.mixer_norm = nn.Identity()  # the pre-norm block then reads x itself: h + Dropout(mixer(h))
    return block


def output_norm(norm: str, d_model: int, enabled: bool) -> nn.Module:
    """The final norm of the stack: ``norm`` over ``d_model`` when ``enabled`` (``final_norm``), else the identity."""
    return get_norm(norm, d_model, eps=NORM_EPS) if enabled else nn.Identity()
