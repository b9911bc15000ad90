"""``lstm`` and ``gru``: a stack of LSTM or GRU layers that is one ``torch.nn.LSTM``/``torch.nn.GRU`` (one cuDNN call).

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

Layer ``l`` feeds its hidden states ``h_t`` to layer ``l + 1`` (dropout in between while training). The stack *is*
``torch.nn.LSTM(num_layers=n_layers)`` (:attr:`RNN.rnn`): its state dict is that module's under ``rnn.``
(:func:`from_torch_rnn` loads one) and a full sequence or a prefill is one call of it -- on a GPU one multi-layer
cuDNN call, which lets cuDNN overlap the layers (layer ``l + 1`` at step ``t`` beside layer ``l`` at ``t + 1``) where
a call per layer could not (1.5x faster in a CUDA graph, docs/benchmarks.md). On a CPU a decoding ``step`` of one
position goes layer by layer through ATen's fused cells (``torch.lstm_cell``/``gru_cell``, the same equations and
weights), cheaper per token there than a call of the module, which sets oneDNN up each time; on a GPU it is one call
of the module too.

:class:`RNNLayer` is the single-layer form other entries use as a sequence mixer (``transformer_like``,
``deep_res_lstm``, ``multi_timescale_recurrence``): one fused call of its own one-layer module per sequence.

Deviations: the GRU applies the reset gate after the recurrent matmul, ``r ⊙ (W_hn h)``, not before it as Cho et
al.'s eq. 8 writes ``W (r ⊙ h)`` -- the cuDNN form ``torch.nn.GRU`` implements. The first layer reads ``d_in``
features directly (no input projection, no input dropout) and there is no final norm, so the stack is a plain
``nn.LSTM``/``nn.GRU``. Padding (``attention_mask``) moves every row's valid tokens to the front before the fused
call, so they never see a pad; pad positions output zeros and, while stepping, leave the state unchanged.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import edifice
from edifice.blocks.backbone import SequenceBackbone, SequenceOutput, SequenceState
from edifice.graphs import is_capturing
from edifice.outputs import model_output
from edifice_recurrent.configs.rnn import RNNConfig

__all__ = [
    "RNN",
    "RNNLayer",
    "RNNLayerState",
    "StackedRNNLayer",
    "from_torch_rnn",
    "map_torch_rnn_state_dict",
    "run_rnn",
    "run_valid_first",
    "valid_first",
]

_CELLS: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}
_CellWeights = tuple[Tensor, Tensor, Tensor | None, Tensor | None]


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


def run_valid_first(fn: Callable[[Tensor], Tensor], x: Tensor, mask: Tensor) -> Tensor:
    """A causal map ``fn: [B, T, ·] -> [B, T, d]`` run on each row's valid tokens moved to the front; pads give 0.

    Trailing pads cannot reach the valid positions through a causal recurrence, so every row is computed as if it
    were alone and unpadded (left, right or interior padding alike).
    """
    order = valid_first(mask).unsqueeze(-1)  # (B, T, 1)
    y_front = fn(x.gather(1, order.expand(-1, -1, x.shape[-1])))  # (B, T, d)
    y = torch.zeros_like(y_front).scatter(1, order.expand(-1, -1, y_front.shape[-1]), y_front)
    return y.masked_fill(~mask.unsqueeze(-1), 0.0)


@functools.cache
def _onednn_rnn_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs LSTM/GRU in ``dtype`` on this CPU (bf16 and fp16 need AVX-512 or AMX instructions)."""
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    supported = getattr(torch.ops.mkldnn, probe, None) if probe else None
    return True if supported is None else bool(supported())


def run_rnn(module: nn.LSTM | nn.GRU, x: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
    """One fused call ``module(x, hx)`` of an ``nn.LSTM``/``nn.GRU`` that also runs under CPU autocast anywhere.

    CPU autocast sends the RNN to oneDNN in bf16/fp16, which raises ("could not create a primitive descriptor") on
    CPUs without those instructions (AVX2-only machines); there the call runs in fp32.
    """
    cpu_autocast = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    if cpu_autocast and not _onednn_rnn_supports(torch.get_autocast_dtype("cpu")):
        dtype = next(module.parameters()).dtype
        if isinstance(hx, tuple):
            hx = tuple(t.to(dtype) for t in hx)
        elif hx is not None:
            hx = hx.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return module(x.to(dtype), hx)  # type: ignore[no-any-return]
    return module(x, hx)  # type: ignore[no-any-return]


class _CellStepper(nn.Module):
    """Position-by-position decoding through ATen's fused cells, for layer :attr:`index` of :meth:`module`."""

    cell_type: str
    index: int

    def module(self) -> nn.LSTM | nn.GRU:
        """The ``nn.LSTM``/``nn.GRU`` that holds this layer's weights."""
        raise NotImplementedError

    def cell_weights(self) -> _CellWeights:
        """``(W_ih, W_hh, b_ih, b_hh)`` of this layer (biases None without ``bias``), as ``torch.lstm_cell`` takes."""
        module, i = self.module(), self.index
        w_ih, w_hh = getattr(module, f"weight_ih_l{i}"), getattr(module, f"weight_hh_l{i}")
        if not module.bias:
            return w_ih, w_hh, None, None
        return w_ih, w_hh, getattr(module, f"bias_ih_l{i}"), getattr(module, f"bias_hh_l{i}")

    def cell_step(self, x: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One position: ``x [B, d_in]``, ``h``/``c`` ``[B, d_model]`` -> the new ``(h, c)`` (``c`` None for a GRU)."""
        if c is None:
            return torch.gru_cell(x, h, *self.cell_weights()), None
        new_h, new_c = torch.lstm_cell(x, (h, c), *self.cell_weights())
        return new_h, new_c

    def step_positions(self, x: Tensor, state: RNNLayerState, mask: Tensor | None) -> Tensor:
        """Advance ``state`` (in place) one position at a time over ``x [B, t, d_in]``; pads leave it unchanged."""
        h, c = state.h[0], None if state.c is None else state.c[0]  # (B, d_model)
        if torch.is_grad_enabled():  # copies: the state is overwritten in place below, and autograd saved the old one
            h, c = h.clone(), None if c is None else c.clone()
        outs = []
        for t in range(x.shape[1]):
            new_h, new_c = self.cell_step(x[:, t], h, c)
            if mask is not None:
                keep = mask[:, t, None]  # (B, 1)
                new_h = torch.where(keep, new_h, h)
                new_c = None if c is None or new_c is None else torch.where(keep, new_c, c)
                outs.append(new_h.masked_fill(~keep, 0.0))
            else:
                outs.append(new_h)
            h, c = new_h, new_c
        store_state(state, h[None], None if c is None else c[None])
        return outs[0][:, None] if len(outs) == 1 else torch.stack(outs, 1)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RNNLayerState:
        """Zero ``(h_0, c_0)``, as ``torch.nn.LSTM`` starts; constant size whatever ``max_len``."""
        h = torch.zeros((1, batch_size, self.module().hidden_size), device=device, dtype=dtype)
        return RNNLayerState(h=h, c=torch.zeros_like(h) if self.cell_type == "lstm" else None)


def store_state(state: RNNLayerState, h: Tensor, c: Tensor | None) -> None:
    """Write the new ``h`` (and ``c``) ``[1, B, d_model]`` into ``state`` in place."""
    state.h.copy_(h)
    if state.c is not None and c is not None:
        state.c.copy_(c)


class RNNLayer(_CellStepper):
    """One LSTM or GRU layer, ``x [B, T, d_in] -> h [B, T, d_model]``, following the sequence-mixer protocol."""

    def __init__(self, cell_type: str, d_in: int, d_model: int, *, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if cell_type not in _CELLS:
            raise ValueError(f"RNNLayer: cell_type must be one of {', '.join(_CELLS)}, got {cell_type!r}")
        self.cell_type, self.index = cell_type, 0
        self.cell = _CELLS[cell_type](d_in, d_model, num_layers=1, bias=bias, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def module(self) -> nn.LSTM | nn.GRU:
        """The layer's own one-layer ``nn.LSTM``/``nn.GRU``."""
        return self.cell

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
            return self.dropout(self.fused(x)[0])  # type: ignore[no-any-return]
        return self.dropout(run_valid_first(lambda v: self.fused(v)[0], x, mask))  # type: ignore[no-any-return]

    def fused(self, x: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        """One fused call of the layer's module over ``x [B, T, d_in]`` from ``hx`` (:func:`run_rnn`)."""
        return run_rnn(self.cell, x, hx)

    def _step(self, x: Tensor, state: RNNLayerState, mask: Tensor | None) -> Tensor:
        """Advance ``state`` (in place) by the ``t`` positions of ``x [B, t, d_in]``; pads leave it unchanged."""
        if mask is not None or x.shape[1] == 1:
            return self.step_positions(x, state, mask)  # pads need a per-position gate anyway
        # A prefill: one fused call from (copies of) the carried state, which is overwritten in place afterwards.
        if state.c is None:
            y, h = self.fused(x, state.h.clone())
            store_state(state, h, None)
        else:
            y, (h, c) = self.fused(x, (state.h.clone(), state.c.clone()))
            store_state(state, h, c)
        return y


class StackedRNNLayer(_CellStepper):
    """Layer ``index`` of an :class:`RNN`'s stack, for decoding; it holds no parameters (the stack's module does).

    The stack's own ``forward`` and prefills run every layer in one call of the module; this layer steps one position
    at a time (and, called alone without a state, runs from a zero state position by position).
    """

    def __init__(self, stack: nn.LSTM | nn.GRU, index: int) -> None:
        super().__init__()
        # A tuple keeps the module out of this layer's children: its weights are the stack's, counted once.
        self._stack = (stack,)
        self.cell_type = "lstm" if isinstance(stack, nn.LSTM) else "gru"
        self.index = index

    def module(self) -> nn.LSTM | nn.GRU:
        """The stack's ``nn.LSTM``/``nn.GRU``."""
        return self._stack[0]

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d_in]`` -> ``[B, T, d_model]``, one position at a time from ``state`` (zeros when None)."""
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        y = self.step_positions(x, state, mask)
        stack = self.module()
        if self.training and stack.dropout and self.index < stack.num_layers - 1:  # nn.LSTM's: all layers but the last
            y = nn.functional.dropout(y, stack.dropout, training=True)
        return y

    def extra_repr(self) -> str:
        return f"{self.cell_type}, layer={self.index}"


class RNN(SequenceBackbone):
    """``lstm``/``gru``: ``n_layers`` stacked recurrent layers of width ``d_model``, a plain ``nn.LSTM``/``nn.GRU``."""

    config_class: ClassVar[type[edifice.ArchConfig]] = RNNConfig
    config: RNNConfig
    rnn: nn.LSTM | nn.GRU
    """The whole stack, ``torch.nn.LSTM``/``nn.GRU(num_layers=n_layers, batch_first=True)``."""

    def __init__(self, config: RNNConfig) -> None:
        super().__init__(config)
        if config.vocab_size is None:
            self.input_proj = nn.Identity()  # the first layer reads d_in features itself, as nn.LSTM(input_size) does
            self.embed_dropout = nn.Identity()  # and nn.LSTM drops nothing from its input
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index`` of the stack, which layer 0 creates: the first reads the input features, the others ``h``."""
        c = self.config
        if index == 0:
            d_in = c.d_in if c.vocab_size is None and c.d_in is not None else c.d_model
            dropout = c.dropout if c.n_layers > 1 else 0.0  # nn.LSTM: dropout on every layer's output but the last
            self.rnn = _CELLS[c.cell_type](
                d_in, c.d_model, num_layers=c.n_layers, bias=c.bias, dropout=dropout, batch_first=True
            )
        return StackedRNNLayer(self.rnn, index)

    def build_norm(self) -> nn.Module:
        """No final norm: the stack's output is the last layer's ``h``, as ``nn.LSTM``'s."""
        return nn.Identity()

    def forward(
        self, x: Tensor | None = None, input_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor | SequenceOutput:
        """Run the stack on ``x [B, T, d_in]`` or ``input_ids [B, T]`` in one fused call; pads output zeros."""
        self.check_inputs(x=x, input_ids=input_ids, attention_mask=attention_mask)
        inputs = input_ids if self.embed_tokens is not None else x
        assert inputs is not None
        h = self.embed_dropout(self.embed_inputs(inputs))
        if attention_mask is None:
            y = self._run_stack(h)
        else:
            y = run_valid_first(self._run_stack, h, attention_mask)
        return self._output(self.pool(self.norm(y), attention_mask), None)

    def _run_stack(self, h: Tensor) -> Tensor:
        """Every layer over ``h [B, T, d]`` from zero state in one call (recomputed in backward when checkpointing)."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(lambda v: run_rnn(self.rnn, v)[0], h, use_reentrant=False)
        return run_rnn(self.rnn, h)[0]

    def step(
        self, x: Tensor, state: SequenceState, *, attention_mask: Tensor | None = None
    ) -> tuple[Tensor | SequenceOutput, SequenceState]:
        """Advance by ``t >= 1`` positions; unpadded, one fused call of the whole stack (bar one position on a CPU).

        On a CPU one position goes layer by layer through ATen's fused cells, cheaper than a call of the module
        (oneDNN's per-call set-up); on a GPU the one cuDNN call is cheaper, eager and in a CUDA graph alike. Padded
        positions go through the cells, which gate the state per position.
        """
        if attention_mask is not None or (x.shape[1] == 1 and x.device.type == "cpu"):
            return super().step(x, state, attention_mask=attention_mask)  # layer by layer through the fused cells
        if not is_capturing():  # validation reads values back to the host, which a CUDA graph capture forbids
            self.check_inputs(**{self.primary_input: x})
        state.position.add_(x.shape[1])
        layers: list[RNNLayerState] = state.layers
        inputs = self.embed_dropout(self.embed_inputs(x))
        h0 = torch.cat([s.h for s in layers])  # (n_layers, B, d_model): new tensors, so the in-place update is safe
        c_n: Tensor | None = None
        if self.config.cell_type == "gru":
            y, h_n = run_rnn(self.rnn, inputs, h0)
        else:
            c0 = torch.cat([s.c for s in layers if s.c is not None])
            y, (h_n, c_n) = run_rnn(self.rnn, inputs, (h0, c0))
        for i, layer_state in enumerate(layers):
            store_state(layer_state, h_n[i : i + 1], None if c_n is None else c_n[i : i + 1])
        return self._output(self.norm(y), None), state


_TORCH_KEY = re.compile(r"(weight|bias)_(ih|hh)_l(\d+)")


def map_torch_rnn_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an ``nn.LSTM``/``nn.GRU`` state dict to :class:`RNN` keys: ``weight_ih_l1`` -> ``rnn.weight_ih_l1``."""
    for key in state_dict:
        if _TORCH_KEY.fullmatch(key) is None:
            raise ValueError(f"map_torch_rnn_state_dict: unexpected key {key!r} (expected e.g. 'weight_ih_l0')")
    return {f"rnn.{key}": value for key, value in state_dict.items()}


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
