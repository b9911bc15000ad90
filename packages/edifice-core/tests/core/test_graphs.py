"""GraphedStep: what it refuses on any machine, and (on the GPU machine) that replays advance the state in place."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from edifice.graphs import GraphedStep
from edifice.outputs import model_output
from edifice.testing.tol import FP32, assert_close


@model_output
class RunningSum:
    """The state of :class:`Accumulator`."""

    total: Tensor


class Accumulator(nn.Module):
    """y_t = W (x_t + sum_{s<t} x_s): a stateful toy whose state must advance on every call."""

    def __init__(self, d: int = 4, in_place: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.in_place = in_place

    def init_state(self, batch: int) -> RunningSum:
        return RunningSum(torch.zeros(batch, 1, self.proj.in_features, device=self.proj.weight.device))

    def step(self, x: Tensor, state: RunningSum) -> tuple[Tensor, RunningSum]:
        total = state.total + x.sum(1, keepdim=True)
        if self.in_place:
            state.total.copy_(total)
            return self.proj(total), state
        return self.proj(total), RunningSum(total)


def test_refuses_a_module_without_step() -> None:
    with pytest.raises(TypeError, match="has no step"):
        GraphedStep(nn.Linear(4, 4), None, torch.zeros(1, 1, 4))


def test_refuses_cpu_tensors_naming_them() -> None:
    model = Accumulator()
    with pytest.raises(ValueError, match=r"CUDA tensors; these are not on a CUDA device: x, state\.total"):
        GraphedStep(model, model.init_state(2), torch.zeros(2, 1, 4))


def test_refuses_zero_warmup() -> None:
    model = Accumulator()
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedStep(model, model.init_state(2), torch.zeros(2, 1, 4), warmup=0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_replays_advance_the_state_and_match_eager() -> None:
    torch.manual_seed(0)
    model = Accumulator().cuda()
    xs = torch.randn(2, 5, 4, device="cuda")
    eager_state, graph_state = model.init_state(2), model.init_state(2)
    with torch.no_grad():
        expected = torch.cat([model.step(xs[:, t : t + 1], eager_state)[0] for t in range(5)], 1)
        graphed = GraphedStep(model, graph_state, xs[:, :1])
        assert graph_state.total.abs().sum() == 0, "warming up must leave the state as it was"
        got = torch.cat([graphed(xs[:, t : t + 1]).clone() for t in range(5)], 1)
    assert_close(got, expected, FP32, name="replayed steps")
    assert_close(graph_state.total, eager_state.total, FP32, name="state after the replays")
    with pytest.raises(ValueError, match=r"input 'x' must match the capture: expected \(2, 1, 4\)"):
        graphed(xs[:1, :1])
    with pytest.raises(ValueError, match="captured with inputs"):
        graphed(xs[:, :1], mask=xs[:, :1])


@pytest.mark.gpu
@cuda
def test_refuses_a_step_that_returns_new_state_tensors() -> None:
    model = Accumulator(in_place=False).cuda()
    with pytest.raises(ValueError, match=r"replaced state tensors \(\.total\) instead of updating them in place"):
        GraphedStep(model, model.init_state(2), torch.zeros(2, 1, 4, device="cuda"))
