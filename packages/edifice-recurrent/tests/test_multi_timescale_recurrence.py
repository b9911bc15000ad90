"""Tests of ``multi_timescale_recurrence``: FTW's temporal hierarchy against its equations and its defining property.

The oracle is ``docs/design/multi_timescale_recurrence.md`` eqs. (1)-(4) written position by position in fp64 with
``torch.nn.LSTMCell``/``GRUCell`` holding the model's weights -- no windows, no fused calls. The property only the
mechanism has: a slow core's state is constant between its ticks, and an input reaches it only at its next tick (a
plain stacked LSTM, or a hierarchy whose slow core read every frame, changes at once).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edifice
from edifice.testing import signature
from edifice_recurrent.multi_timescale_recurrence import (
    MultiTimescaleCore,
    MultiTimescaleRecurrence,
    MultiTimescaleState,
    slow_ticks,
)
from edifice_recurrent.rnn import RNNLayer

TOL = {"atol": 1e-5, "rtol": 1e-5}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def build(seed: int = 0, **overrides: object) -> MultiTimescaleRecurrence:
    torch.manual_seed(seed)
    fields = {"d_model": 6, "d_in": 4, "scales": (1, 3, 5), **overrides}
    return edifice.build("multi_timescale_recurrence", **fields).eval()  # type: ignore[return-value]


def reference_cell(layer: RNNLayer) -> nn.LSTMCell | nn.GRUCell:
    """A ``torch.nn.LSTMCell``/``GRUCell`` in fp64 with the weights of ``layer``'s one-layer ``nn.LSTM``/``nn.GRU``."""
    rnn = layer.cell
    cls = nn.LSTMCell if layer.cell_type == "lstm" else nn.GRUCell
    cell = cls(rnn.input_size, rnn.hidden_size).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, f"{name}_l0"))
    return cell


def paper_hierarchy(core: MultiTimescaleCore, u: torch.Tensor) -> list[torch.Tensor]:
    """Eqs. (1)-(4) one position at a time in fp64: every core's ``h^k_t`` ``[B, T, d]``, fastest first."""
    scales, K = core.scales, len(core.scales)
    cells = [reference_cell(layer) for layer in core.cells]
    lstm = core.cells[0].cell_type == "lstm"
    B, T, _ = u.shape
    h = [torch.zeros(B, core.d_model, dtype=torch.float64) for _ in range(K)]
    c = [torch.zeros(B, core.d_model, dtype=torch.float64) for _ in range(K)]
    trace: list[list[torch.Tensor]] = [[] for _ in range(K)]
    for t in range(T):
        for k in range(K - 1, 0, -1):  # slowest first: the core below still holds its state after t - 1
            if t % scales[k] == 0:  # eq. (1); otherwise eq. (2) keeps (h, c)
                inp = h[k - 1] if k == K - 1 else torch.cat([h[k - 1], h[k + 1]], -1)
                h[k], c[k] = cells[k](inp, (h[k], c[k])) if lstm else (cells[k](inp, h[k]), c[k])
        inp = torch.cat([u[:, t].double(), h[1]], -1)  # eq. (3)
        h[0], c[0] = cells[0](inp, (h[0], c[0])) if lstm else (cells[0](inp, h[0]), c[0])
        for k in range(K):
            trace[k].append(h[k])
    return [torch.stack(parts, 1) for parts in trace]


def paper_model(model: MultiTimescaleRecurrence, x: torch.Tensor) -> torch.Tensor:
    """The stacked hierarchies of eqs. (1)-(4) in fp64; the output is the last fast core's ``h`` (eq. 4)."""
    u = x.double()
    for core in model.layers:
        assert isinstance(core, MultiTimescaleCore)
        u = paper_hierarchy(core, u)[0]
    return u


@signature("multi_timescale_recurrence")
def test_slow_cores_change_only_at_their_ticks() -> None:
    # Non-nested periods (3 and 5) so the two slow cores tick on different grids.
    model = build(seed=1)
    core = model.layers[0]
    assert isinstance(core, MultiTimescaleCore)
    x = randn(2, 17, 4, seed=2)
    with torch.no_grad():
        states = core.core_states(x)
        for k, scale in enumerate(core.scales):
            step = (states[k][:, 1:] - states[k][:, :-1]).abs().amax(dim=(0, 2))  # (T - 1,) change at t = 1..16
            for t in range(1, 17):
                if t % scale == 0:
                    assert step[t - 1] > 1e-4, f"core {k} (period {scale}) must update at its tick t={t}"
                else:
                    assert step[t - 1] == 0, f"core {k} (period {scale}) changed between ticks at t={t}"
        # Information reaches a slow core only at its next tick: perturb the input at t = 7 (no slow tick there).
        x2 = x.clone()
        x2[:, 7] += 1.0
        moved = [(a - b).abs().amax(dim=(0, 2)) for a, b in zip(core.core_states(x2), states, strict=True)]
    first_change = {k: int(torch.nonzero(m > 1e-6)[0]) for k, m in enumerate(moved)}
    assert first_change == {0: 7, 1: 9, 2: 10}, first_change  # fast at 7, period 3 at 9, period 5 at 10


@signature("multi_timescale_recurrence")
def test_forward_and_every_core_match_the_fp64_loop_of_the_equations() -> None:
    model = build(seed=3)
    core = model.layers[0]
    assert isinstance(core, MultiTimescaleCore)
    x = randn(3, 23, 4, seed=4)
    with torch.no_grad():
        want = paper_hierarchy(core, x)
        for got, expected in zip(core.core_states(x), want, strict=True):
            torch.testing.assert_close(got, expected.float(), **TOL)
        torch.testing.assert_close(model(x=x), want[0].float(), **TOL)


@pytest.mark.parametrize(
    ("cell_type", "scales", "n_layers"), [("gru", (1, 4), 1), ("lstm", (1, 2, 4, 8), 2), ("gru", (1, 2, 7), 2)]
)
def test_other_cells_scales_and_depths_match_the_loop(cell_type: str, scales: tuple[int, ...], n_layers: int) -> None:
    model = build(seed=5, cell_type=cell_type, scales=scales, n_layers=n_layers)
    x = randn(2, 19, 4, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(model(x=x), paper_model(model, x).float(), **TOL)


def test_step_in_any_chunks_equals_forward_and_tracks_the_tick_phase() -> None:
    model = build(seed=7, n_layers=2)
    x = randn(2, 20, 4, seed=8)
    with torch.no_grad():
        want = model(x=x)
        for chunks in ((20,), (1,) * 20, (4, 1, 3, 5, 2, 5), (7, 13)):
            state = model.init_state(2)
            pieces, start = [], 0
            for n in chunks:
                pieces.append(model.step(x[:, start : start + n], state)[0])
                start += n
            torch.testing.assert_close(torch.cat(pieces, 1), want, **TOL)
            layer_state = state.layers[0]
            assert isinstance(layer_state, MultiTimescaleState)
            assert layer_state.position.tolist() == [20, 20]
    # The state after 20 positions is the loop's last (h of every core): slow cores hold what they had at their tick.
    core = model.layers[0]
    assert isinstance(core, MultiTimescaleCore)
    with torch.no_grad():
        last = [h[:, -1] for h in paper_hierarchy(core, x)]
    for s, h in zip(layer_state.cores, last, strict=True):
        torch.testing.assert_close(s.h[0], h.float(), **TOL)


def test_padding_left_and_right_equals_each_sequence_alone() -> None:
    model = build(seed=9)
    x = randn(3, 12, 4, seed=10)
    mask = torch.tensor([[True] * 12, [True] * 7 + [False] * 5, [False] * 4 + [True] * 8])
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        for b in range(3):
            alone = model(x=x[b : b + 1, mask[b]])
            torch.testing.assert_close(got[b, mask[b]], alone[0], **TOL)
            assert not got[b, ~mask[b]].any(), "pad positions output zeros"


def test_step_with_padding_keeps_each_rows_phase() -> None:
    # Row 0 is left-padded by 3 in its prefill, so afterwards the two rows sit at different tick phases.
    model = build(seed=11)
    x = randn(2, 14, 4, seed=12)
    mask = torch.tensor([[False] * 3 + [True] * 3, [True] * 6])
    with torch.no_grad():
        state = model.init_state(2)
        first, _ = model.step(x[:, :6], state, attention_mask=mask)
        rest = torch.cat([model.step(x[:, t : t + 1], state)[0] for t in range(6, 14)], 1)
        assert state.position.tolist() == [11, 14]
        alone0 = model(x=x[:1, 3:])
        alone1 = model(x=x[1:])
    torch.testing.assert_close(torch.cat([first[0, 3:], rest[0]]), alone0[0], **TOL)
    torch.testing.assert_close(torch.cat([first[1], rest[1]]), alone1[0], **TOL)
    assert not first[0, :3].any(), "pad positions output zeros"


def test_gradients_of_forward_and_of_stepping_match_the_loop() -> None:
    model = build(seed=13).train()
    x = randn(2, 9, 4, seed=14)
    cotangent = randn(2, 9, 6, seed=15)
    params = list(model.parameters())
    want = torch.autograd.grad((model(x=x) * cotangent).sum(), params)
    state = model.init_state(2)
    y = torch.cat([model.step(x[:, :4], state)[0], model.step(x[:, 4:5], state)[0], model.step(x[:, 5:], state)[0]], 1)
    stepped = torch.autograd.grad((y * cotangent).sum(), params)
    core = model.layers[0]
    assert isinstance(core, MultiTimescaleCore)
    ref_cells = [reference_cell(layer) for layer in core.cells]
    # The loop's gradients, mapped back onto the model's parameter names (cores.k.cell.<name>_l0).
    with torch.enable_grad():
        loop_cells = [c.requires_grad_(True) for c in ref_cells]
        y64 = _loop_with(core, loop_cells, x)
        grads64 = torch.autograd.grad((y64 * cotangent.double()).sum(), [p for c in loop_cells for p in c.parameters()])
    names = [n for n, _ in model.named_parameters()]
    loop_by_name = {}
    for k, cell in enumerate(loop_cells):
        for (pname, _), g in zip(cell.named_parameters(), grads64[4 * k : 4 * k + 4], strict=True):
            loop_by_name[f"layers.0.cores.{k}.cell.{pname}_l0"] = g
    for name, a, b in zip(names, want, stepped, strict=True):
        torch.testing.assert_close(
            a, loop_by_name[name].float(), atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n} (step): {m}")


def _loop_with(core: MultiTimescaleCore, cells: list[nn.LSTMCell | nn.GRUCell], u: torch.Tensor) -> torch.Tensor:
    """:func:`paper_hierarchy`'s fast-core output with the given (differentiable) fp64 cells."""
    K, B, T = len(core.scales), u.shape[0], u.shape[1]
    h = [torch.zeros(B, core.d_model, dtype=torch.float64) for _ in range(K)]
    c = [torch.zeros(B, core.d_model, dtype=torch.float64) for _ in range(K)]
    outs = []
    for t in range(T):
        for k in range(K - 1, 0, -1):
            if t % core.scales[k] == 0:
                inp = h[k - 1] if k == K - 1 else torch.cat([h[k - 1], h[k + 1]], -1)
                h[k], c[k] = cells[k](inp, (h[k], c[k]))
        h[0], c[0] = cells[0](torch.cat([u[:, t].double(), h[1]], -1), (h[0], c[0]))
        outs.append(h[0])
    return torch.stack(outs, 1)


def test_slow_ticks_cut_the_sequence_at_every_slow_period() -> None:
    assert slow_ticks(10, (1, 3, 4)) == [0, 3, 4, 6, 8, 9]
    assert slow_ticks(3, (1, 8)) == [0]


def test_config_aliases_errors_and_token_inputs() -> None:
    cfg = edifice.config("multi_timescale_recurrence", embed_dim=5, output_size=12, scales=[1, 6])
    assert (cfg.d_in, cfg.d_model, cfg.scales) == (5, 12, (1, 6))
    for scales, message in (((1,), "at least two"), ((2, 4), "start with 1"), ((1, 4, 4), "strictly increasing")):
        with pytest.raises(edifice.ConfigError, match=rf"'scales'.*{message}"):
            edifice.config("multi_timescale_recurrence", scales=scales)
    with pytest.raises(edifice.ConfigError, match="cell_type"):
        edifice.config("multi_timescale_recurrence", cell_type="rnn")
    with pytest.raises(ValueError, match="strictly increasing"):
        MultiTimescaleCore(4, 4, (1, 3, 2))
    lm = edifice.build("multi_timescale_recurrence", d_model=8, scales=(1, 2), vocab_size=11, output="last")
    assert lm(input_ids=torch.randint(0, 11, (2, 5))).shape == (2, 11)
    with pytest.raises(edifice.InputError, match=r"expected \[B, T, 4\]"):
        build()(x=torch.zeros(2, 5, 3))
