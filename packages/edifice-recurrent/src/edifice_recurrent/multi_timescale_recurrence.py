"""``multi_timescale_recurrence``: FTW's temporal hierarchy -- slow recurrent cores that tick every τ steps.

Jaderberg et al., 2019, "Human-level performance in 3D multiplayer games with population-based reinforcement
learning", Science 364:859, https://arxiv.org/abs/1807.01281 (Supplementary Materials, "Temporally hierarchical
reinforcement learning", Fig. S11). The FTW agent's recurrent core is a fast LSTM that steps every frame,
conditioned on a slow LSTM that reads the fast core's state and updates only every τ frames, holding its state in
between. With periods ``scales = (1, τ_1, ..., τ_{K-1})`` (core 0 the fast one), cells ``C_k`` of width ``d_model``,
zero initial states and absolute positions ``t = 0, 1, ...`` (``docs/design/multi_timescale_recurrence.md``)::

    for k = K-1, ..., 1:                                  (slowest first)
      (h^k_t, c^k_t) = C_k([h^{k-1}_{t-1} ; h^{k+1}_t], (h^k_{t-1}, c^k_{t-1}))   if t mod τ_k = 0   (1)
      (h^k_t, c^k_t) = (h^k_{t-1}, c^k_{t-1})                                     otherwise         (2)
    (h^0_t, c^0_t) = C_0([u_t ; h^1_t], (h^0_{t-1}, c^0_{t-1}))                                     (3)
    y_t = h^0_t                                                                                      (4)

(no ``h^{k+1}`` term for the slowest core). ``C_k`` is ``torch.nn.LSTM``'s cell (or ``nn.GRU``'s, ``cell_type``).

``forward`` cuts the sequence at the slow ticks: the ticking slow cores take one cell step there (eq. 1), and the
fast core runs each window between two ticks -- where the slow states are constant -- as one fused
``torch.nn.LSTM`` call (cuDNN on GPU) from its carried state (eq. 3). The loop is over slow ticks (``T / τ_1`` per
layer), never over frames; that is the least the hierarchy allows, since the slow core at ``t`` reads the fast
core's state at ``t - 1``. ``step`` keeps each row's absolute position in its state (the tick phase of core ``k`` is
``position mod τ_k``) and steps position by position through the fused ATen cells, gating each slow core's update by
its tick, so rows may have different phases and nothing syncs with the host.

Deviations: FTW's variational units are left out -- the Gaussian prior (slow core) and posterior (fast core) heads,
the sampled latent ``z_t`` the policy reads, the fast core's extra inputs (the prior's parameters, the previous
``z``) and the KL terms -- as are its shared DNC memory and its gradient scaling from the fast to the slow core: the
backbone is deterministic and outputs ``h^0``. With more than two cores a slow core reads its neighbours (the core
below at ``t - 1``, the core above at ``t``) rather than every other core; with two cores this is FTW's reading.
PyTorch's cell initialisation (``U(-1/√d, 1/√d)``), as the ``lstm`` entry. Padding moves each row's valid tokens to
the front before ``forward`` (so every row starts at position 0); pad positions output zeros and, while stepping,
neither tick nor advance the position.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

import edifice
from edifice.blocks.backbone import SequenceBackbone
from edifice.outputs import model_output
from edifice_recurrent.configs.multi_timescale_recurrence import MultiTimescaleConfig
from edifice_recurrent.rnn import RNNLayer, RNNLayerState, run_valid_first

__all__ = ["MultiTimescaleCore", "MultiTimescaleRecurrence", "MultiTimescaleState", "slow_ticks"]


@model_output
class MultiTimescaleState:
    """Decoding state of one hierarchy, updated in place by ``step``: every core's ``(h, c)`` and the tick phase."""

    cores: list[RNNLayerState]
    """Per-core state, fastest first: ``h`` (and ``c`` for an LSTM) ``[1, B, d_model]``."""
    position: Tensor
    """``[B]`` int64: each row's next absolute position; core ``k`` ticks there when ``position % scales[k] == 0``."""


def slow_ticks(length: int, scales: tuple[int, ...]) -> list[int]:
    """Positions ``0 <= t < length`` at which at least one slow core (``scales[1:]``) ticks, in order."""
    return sorted({t for s in scales[1:] for t in range(0, length, s)} | {0})


class MultiTimescaleCore(nn.Module):
    """One FTW hierarchy: a fast core and slow cores ticking every ``scales[k]`` positions, ``[B, T, d_in] -> d``.

    Follows the sequence-mixer protocol (``mask``, ``positions``, ``state``; ``init_state``).
    """

    def __init__(
        self,
        d_in: int,
        d_model: int,
        scales: tuple[int, ...],
        *,
        cell_type: str = "lstm",
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        scales = tuple(scales)
        if len(scales) < 2 or scales[0] != 1 or any(b <= a for a, b in itertools.pairwise(scales)):
            raise ValueError(f"MultiTimescaleCore: scales must be (1, τ_1, ...) strictly increasing, got {scales}")
        self.scales = scales
        self.d_model = d_model
        K = len(scales)
        # Input width of each core (eqs. 1 and 3): the fast core reads [u ; h^1], a slow core [h^{k-1} ; h^{k+1}].
        widths = [d_in + d_model] + [d_model + (d_model if k < K - 1 else 0) for k in range(1, K)]
        self.cores = nn.ModuleList([RNNLayer(cell_type, w, d_model, bias=bias) for w in widths])
        self.dropout = nn.Dropout(dropout)

    @property
    def cells(self) -> list[RNNLayer]:
        """The cores, fastest first (each an :class:`RNNLayer` holding its ``nn.LSTM``/``nn.GRU``)."""
        return cast(list[RNNLayer], list(self.cores))

    def reset_parameters(self) -> None:
        """PyTorch's cell initialisation in every core: weights and biases ~ U(-1/√d_model, 1/√d_model)."""
        for core in self.cells:
            core.reset_parameters()

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d_in]`` -> the fast core's ``h [B, T, d_model]``; ``mask [B, T]`` marks valid tokens.

        Without ``state`` every row starts at position 0 (``positions`` are implied by ``mask``); with a
        :class:`MultiTimescaleState` the run continues from it (updated in place).
        """
        if state is not None:
            return self.dropout(self._step(x, state, mask))  # type: ignore[no-any-return]
        if mask is None:
            return self.dropout(self._aligned(x)[0])  # type: ignore[no-any-return]
        # Valid tokens first: every row then starts at position 0 on the same tick grid, and the trailing pads
        # cannot reach the valid positions through the causal hierarchy.
        return self.dropout(run_valid_first(lambda v: self._aligned(v)[0], x, mask))  # type: ignore[no-any-return]

    def core_states(self, x: Tensor) -> list[Tensor]:
        """Every core's hidden state ``h^k_t`` at every position of ``x [B, T, d_in]`` (from zero), fastest first.

        Each is ``[B, T, d_model]``; a slow core's is constant between its ticks (eq. 2).
        """
        held = self._aligned(x, keep_slow=True)[1]
        assert held is not None
        return held

    def _aligned(self, x: Tensor, *, keep_slow: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """Eqs. 1-4 from zero state for rows that all start at position 0: ``(y [B, T, d], per-core h or None)``."""
        B, T, _ = x.shape
        K, d, cells = len(self.scales), self.d_model, self.cells
        zero = x.new_zeros(B, d)
        h: list[Tensor] = [zero] * K  # (B, d) each: h^k after the last processed position
        c: list[Tensor | None] = [zero if core.cell_type == "lstm" else None for core in cells]
        outs: list[Tensor] = []
        held: list[list[Tensor]] = [[] for _ in range(K)]
        bounds = [*slow_ticks(T, self.scales), T]
        for start, stop in itertools.pairwise(bounds):
            # Slow ticks at `start`, slowest first (eq. 1); the others hold their state (eq. 2). h[k - 1] is still
            # the core below's state after start - 1, h[k + 1] the core above's at start (already stepped).
            for k in range(K - 1, 0, -1):
                if start % self.scales[k] == 0:
                    inp = h[k - 1] if k == K - 1 else torch.cat([h[k - 1], h[k + 1]], dim=-1)
                    h[k], c[k] = cells[k].cell_step(inp, h[k], c[k])
            # The fast core over the window [start, stop) where h^1 is constant: one fused call (eq. 3).
            width = stop - start
            window = torch.cat([x[:, start:stop], h[1][:, None].expand(B, width, d)], dim=-1)  # (B, w, d_in + d)
            y, h[0], c[0] = _fused(cells[0], window, h[0], c[0])  # y: (B, w, d)
            outs.append(y)
            if keep_slow:
                held[0].append(y)
                for k in range(1, K):
                    held[k].append(h[k][:, None].expand(B, width, d))
        y_all = torch.cat(outs, dim=1)  # (B, T, d): eq. 4
        return y_all, ([torch.cat(parts, dim=1) for parts in held] if keep_slow else None)

    def _step(self, x: Tensor, state: MultiTimescaleState, mask: Tensor | None) -> Tensor:
        """Advance ``state`` in place by the ``t`` positions of ``x [B, t, d_in]`` (eqs. 1-4, position by position)."""
        K, cells = len(self.scales), self.cells
        # Copies: the state is overwritten in place below while autograd may still need the old values.
        h = [s.h[0].clone() for s in state.cores]  # (B, d) each
        c = [None if s.c is None else s.c[0].clone() for s in state.cores]
        position = state.position.clone()  # (B,) absolute position of the next valid token
        outs = []
        for j in range(x.shape[1]):
            valid = None if mask is None else mask[:, j]  # (B,)
            for k in range(K - 1, 0, -1):
                tick = position.remainder(self.scales[k]) == 0  # (B,): the tick phase of core k
                if valid is not None:
                    tick = tick & valid
                inp = h[k - 1] if k == K - 1 else torch.cat([h[k - 1], h[k + 1]], dim=-1)
                new_h, new_c = cells[k].cell_step(inp, h[k], c[k])
                h[k], c[k] = _gate(tick, new_h, h[k]), _gate_c(tick, new_c, c[k])
            new_h, new_c = cells[0].cell_step(torch.cat([x[:, j], h[1]], dim=-1), h[0], c[0])
            if valid is None:
                h[0], c[0] = new_h, new_c
                outs.append(new_h)
                position = position + 1
            else:
                h[0], c[0] = _gate(valid, new_h, h[0]), _gate_c(valid, new_c, c[0])
                outs.append(new_h.masked_fill(~valid[:, None], 0.0))
                position = position + valid.to(position.dtype)
        for s, hk, ck in zip(state.cores, h, c, strict=True):
            s.h.copy_(hk[None])
            if s.c is not None and ck is not None:
                s.c.copy_(ck[None])
        state.position.copy_(position)
        return torch.stack(outs, dim=1)  # (B, t, d)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MultiTimescaleState:
        """Zero states for every core and position 0 (every core ticks first); constant size whatever ``max_len``."""
        cores = [core.init_state(batch_size, device=device, dtype=dtype) for core in self.cells]
        return MultiTimescaleState(cores=cores, position=torch.zeros(batch_size, dtype=torch.long, device=device))


def _fused(core: RNNLayer, x: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One fused ``nn.LSTM``/``nn.GRU`` call over ``x [B, w, d_in]`` from ``(h, c) [B, d]``: ``(y, h_n, c_n)``."""
    if c is None:
        y, h_n = core.fused(x, h[None].contiguous())
        return y, h_n[0], None
    y, (h_n, c_n) = core.fused(x, (h[None].contiguous(), c[None].contiguous()))
    return y, h_n[0], c_n[0]


def _gate(keep: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``keep [B]`` is True, else ``old`` (``[B, d]``)."""
    return torch.where(keep[:, None], new, old)


def _gate_c(keep: Tensor, new: Tensor | None, old: Tensor | None) -> Tensor | None:
    """:func:`_gate` for the LSTM cell state (``None`` for a GRU)."""
    return None if new is None or old is None else _gate(keep, new, old)


class MultiTimescaleRecurrence(SequenceBackbone):
    """``multi_timescale_recurrence``: ``n_layers`` stacked FTW hierarchies; the output is the fast core's ``h``."""

    config_class: ClassVar[type[edifice.ArchConfig]] = MultiTimescaleConfig
    config: MultiTimescaleConfig

    def __init__(self, config: MultiTimescaleConfig) -> None:
        super().__init__(config)
        if config.vocab_size is None:
            self.input_proj = nn.Identity()  # the fast core reads the d_in features itself (u_t = x_t)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Hierarchy ``index``: the first reads the input features, the others the previous fast core's ``h``."""
        c = self.config
        d_in = c.d_in if index == 0 and c.vocab_size is None and c.d_in is not None else c.d_model
        dropout = c.dropout if index < c.n_layers - 1 else 0.0  # between stacked hierarchies, not on the output
        return MultiTimescaleCore(d_in, c.d_model, c.scales, cell_type=c.cell_type, bias=c.bias, dropout=dropout)

    def build_norm(self) -> nn.Module:
        """No final norm: the output is the last fast core's ``h`` (eq. 4), as the FTW policy reads it."""
        return nn.Identity()
