"""``lstm`` and ``gru``: a stack of LSTM or GRU layers, each one fused ``torch.nn.LSTM``/``torch.nn.GRU`` call.

Long short-term memory (Hochreiter & Schmidhuber, 1997, "Long Short-Term Memory", Neural Computation 9(8),
https://doi.org/10.1162/neco.1997.9.8.1735) with the forget gate of Gers, Schmidhuber & Cummins (2000), as every
modern LSTM and ``torch.nn.LSTM`` have it::

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)      f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)   o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t                      h_t = o_t ⊙ tanh(c_t)

Gated recurrent unit (Cho et al., 2014, "Learning Phrase Representations using RNN Encoder-Decoder for Statistical
Machine Translation", https://arxiv.org/abs/1406.1078, eqs. 5-8)::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)      z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

Layer ``l`` feeds its hidden states ``h_t`` to layer ``l + 1`` (dropout in between while training), exactly as
``torch.nn.LSTM(num_layers=n_layers)``: the model loads that module's state dict (:func:`from_torch_rnn`) and gives
its outputs. The full sequence runs as one cuDNN-fusable call per layer; ``step`` calls the same module with the
carried ``(h, c)``.

Deviations: the GRU applies the reset gate after the recurrent matmul, ``r ⊙ (W_hn h)``, not before it as Cho et
al.'s eq. 8 writes ``W (r ⊙ h)`` -- the cuDNN form ``torch.nn.GRU`` implements. The first layer reads ``d_in``
features directly (no input projection) and there is no final norm, so the stack is a plain ``nn.LSTM``/``nn.GRU``.
Padding (``attention_mask``) moves every row's valid tokens to the front before the fused call, so they never see a
pad; pad positions output zeros and, while stepping, leave the state unchanged.
"""

from __future__ import annotations

import functools
import re
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import edifice
from edifice.blocks.backbone import SequenceBackbone
from edifice.outputs import model_output
from edifice_recurrent.configs.rnn import RNNConfig

__all__ = ["RNN", "RNNLayer", "RNNLayerState", "from_torch_rnn", "map_torch_rnn_state_dict"]

_CELLS: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}


@model_output
class RNNLayerState:
    """Decoding state of one layer, in ``torch.nn.LSTM``'s ``(h_0, c_0)`` layout, updated in place by ``step``."""

    h: Tensor
    """Hidden state ``[1, B, d_model]``."""
    c: Tensor | None = None
    """LSTM cell state ``[1, B, d_model]`` (None for a GRU)."""


def valid_first(mask: Tensor) -> Tensor:
    """``[B, T]`` indices that list each row's valid positions first, in order, then its pads (a stable sort)."""
    return torch.sort((~mask).to(torch.int32), dim=1, stable=True).indices


@functools.cache
def _onednn_rnn_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs LSTM/GRU in ``dtype`` on this CPU (bf16 and fp16 need AVX-512 or AMX instructions)."""
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    supported = getattr(torch.ops.mkldnn, probe, None) if probe else None
    return True if supported is None else bool(supported())


class RNNLayer(nn.Module):
    """One LSTM or GRU layer, ``x [B, T, d_in] -> h [B, T, d_model]``, following the sequence-mixer protocol."""

    def __init__(self, cell_type: str, d_in: int, d_model: int, *, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if cell_type not in _CELLS:
            raise ValueError(f"RNNLayer: cell_type must be one of {', '.join(_CELLS)}, got {cell_type!r}")
        self.cell_type = cell_type
        self.cell = _CELLS[cell_type](d_in, d_model, num_layers=1, bias=bias, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        """PyTorch's (and the cuDNN convention's) init: every weight and bias ~ U(-1/√d_model, 1/√d_model)."""
        self.cell.reset_parameters()

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d_in]`` -> ``[B, T, d_model]``; ``mask [B, T]`` marks valid tokens; ``state`` continues a run."""
        if state is not None:
            return self.dropout(self._step(x, state, mask))  # type: ignore[no-any-return]
        if mask is None:
            y, _ = self.fused(x)  # (B, T, d_model): one fused call
            return self.dropout(y)  # type: ignore[no-any-return]
        # Move each row's valid tokens to the front: trailing pads cannot reach them through a causal recurrence.
        order = valid_first(mask).unsqueeze(-1)  # (B, T, 1)
        y_front, _ = self.fused(x.gather(1, order.expand_as(x)))  # (B, T, d_model)
        y = torch.zeros_like(y_front).scatter(1, order.expand_as(y_front), y_front)
        return self.dropout(y.masked_fill(~mask.unsqueeze(-1), 0.0))  # type: ignore[no-any-return]

    def fused(self, x: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        """One fused ``nn.LSTM``/``nn.GRU`` call, ``self.cell(x, hx)``, that also runs under CPU autocast anywhere.

        CPU autocast sends the LSTM to oneDNN in bf16/fp16, which raises ("could not create a primitive
        descriptor") on CPUs without those instructions (AVX2-only machines); there the call runs in fp32.
        """
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            low = torch.get_autocast_dtype("cpu")
            if not _onednn_rnn_supports(low):
                dtype = next(self.cell.parameters()).dtype
                if isinstance(hx, tuple):
                    hx = tuple(t.to(dtype) for t in hx)
                elif hx is not None:
                    hx = hx.to(dtype)
                with torch.autocast("cpu", enabled=False):
                    return self.cell(x.to(dtype), hx)  # type: ignore[no-any-return]
        return self.cell(x, hx)  # type: ignore[no-any-return]

    def _step(self, x: Tensor, state: RNNLayerState, mask: Tensor | None) -> Tensor:
        """Advance ``state`` (in place) by the ``t`` positions of ``x [B, t, d_in]``; pads leave it unchanged."""
        # Copies of the carried state: it is overwritten in place below, while autograd may still need the old one.
        h, c = state.h.clone(), None if state.c is None else state.c.clone()  # (1, B, d_model)
        if mask is None and x.shape[1] > 1:  # a prefill: one fused call from the carried state
            if c is None:
                y, h = self.fused(x, h)
            else:
                y, (h, c) = self.fused(x, (h, c))
            self._store(state, h, c)
            return y
        # Position by position through ATen's fused cell (torch.lstm_cell / gru_cell: nn.LSTM's own equations and
        # weights). On CPU it costs ~10x less per token than a one-position nn.LSTM call (oneDNN set-up), and pads
        # need a per-position gate anyway.
        h, c = h[0], None if c is None else c[0]  # (B, d_model)
        outs = []
        for t in range(x.shape[1]):
            new_h, new_c = self._cell_step(x[:, t], h, c)
            if mask is not None:
                keep = mask[:, t, None]  # (B, 1)
                new_h = torch.where(keep, new_h, h)
                new_c = None if c is None or new_c is None else torch.where(keep, new_c, c)
                outs.append(new_h.masked_fill(~keep, 0.0))
            else:
                outs.append(new_h)
            h, c = new_h, new_c
        self._store(state, h[None], None if c is None else c[None])
        return torch.stack(outs, 1)

    def _cell_step(self, x: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One position: ``x [B, d_in]``, ``h``/``c`` ``[B, d_model]`` -> the new ``(h, c)`` (``c`` None for a GRU)."""
        cell = self.cell
        weights = (
            (cell.weight_ih_l0, cell.weight_hh_l0, cell.bias_ih_l0, cell.bias_hh_l0)
            if cell.bias
            else (cell.weight_ih_l0, cell.weight_hh_l0, None, None)
        )
        if c is None:
            return torch.gru_cell(x, h, *weights), None
        new_h, new_c = torch.lstm_cell(x, (h, c), *weights)
        return new_h, new_c

    @staticmethod
    def _store(state: RNNLayerState, h: Tensor, c: Tensor | None) -> None:
        """Write the new ``h`` (and ``c``) ``[1, B, d_model]`` into ``state`` in place."""
        state.h.copy_(h)
        if state.c is not None and c is not None:
            state.c.copy_(c)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RNNLayerState:
        """Zero ``(h_0, c_0)``, as ``torch.nn.LSTM`` starts; constant size whatever ``max_len``."""
        shape = (1, batch_size, self.cell.hidden_size)
        h = torch.zeros(shape, device=device, dtype=dtype)
        return RNNLayerState(h=h, c=torch.zeros_like(h) if self.cell_type == "lstm" else None)


class RNN(SequenceBackbone):
    """``lstm``/``gru``: ``n_layers`` stacked recurrent layers of width ``d_model``, a plain ``nn.LSTM``/``nn.GRU``."""

    config_class: ClassVar[type[edifice.ArchConfig]] = RNNConfig
    config: RNNConfig

    def __init__(self, config: RNNConfig) -> None:
        super().__init__(config)
        if config.vocab_size is None:
            self.input_proj = nn.Identity()  # the first layer reads d_in features itself, as nn.LSTM(input_size) does
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index``: the first reads the input features, the others the previous layer's ``h``."""
        c = self.config
        d_in = c.d_in if index == 0 and c.vocab_size is None and c.d_in is not None else c.d_model
        dropout = c.dropout if index < c.n_layers - 1 else 0.0  # nn.LSTM: dropout on every layer's output but the last
        return RNNLayer(c.cell_type, d_in, c.d_model, bias=c.bias, dropout=dropout)

    def build_norm(self) -> nn.Module:
        """No final norm: the stack's output is the last layer's ``h``, as ``nn.LSTM``'s."""
        return nn.Identity()


_TORCH_KEY = re.compile(r"(weight|bias)_(ih|hh)_l(\d+)")


def map_torch_rnn_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a ``torch.nn.LSTM``/``nn.GRU`` state dict (``weight_ih_l1``) to :class:`RNN` keys (``layers.1...``)."""
    out = {}
    for key, value in state_dict.items():
        match = _TORCH_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"map_torch_rnn_state_dict: unexpected key {key!r} (expected e.g. 'weight_ih_l0')")
        kind, which, layer = match.groups()
        out[f"layers.{layer}.cell.{kind}_{which}_l0"] = value
    return out


def from_torch_rnn(source: nn.LSTM | nn.GRU, **overrides: Any) -> RNN:
    """Build ``lstm``/``gru`` with the weights of a unidirectional ``torch.nn.LSTM``/``nn.GRU`` (same outputs).

    ``overrides`` set other config fields that add no parameters (e.g. ``output="last"``).
    """
    if not isinstance(source, (nn.LSTM, nn.GRU)):
        raise TypeError(f"from_torch_rnn: expected a torch.nn.LSTM or torch.nn.GRU, got {type(source).__name__}")
    if source.bidirectional or source.proj_size:
        raise ValueError("from_torch_rnn: bidirectional or projected (proj_size > 0) RNNs are not causal models")
    name = "lstm" if isinstance(source, nn.LSTM) else "gru"
    d_in = None if source.input_size == source.hidden_size else source.input_size
    fields = {"d_model": source.hidden_size, "n_layers": source.num_layers, "d_in": d_in, "bias": source.bias}
    weight = next(source.parameters())
    model = edifice.build(
        name, device=weight.device, dtype=weight.dtype, **{**fields, "dropout": source.dropout, **overrides}
    )
    model.load_state_dict(map_torch_rnn_state_dict(source.state_dict()))
    return model  # type: ignore[return-value]
