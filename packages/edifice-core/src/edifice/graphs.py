"""Decoding steps captured in CUDA graphs: one graph launch per token instead of one launch per kernel.

At small batch a recurrent or SSM step is a few dozen tiny kernels, so its eager cost is the launches, not the work.
:class:`GraphedStep` records ``model.step`` once for a fixed input shape and replays it. It relies on the stateful
convention (``docs/design/conventions.md``): ``step`` updates the state's tensors in place and reads no value back to
the host, so the state's tensors are the graph's static buffers and every replay advances them by one step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from edifice.outputs import tensor_leaves

__all__ = ["GraphedStep", "is_capturing"]


def is_capturing() -> bool:
    """Whether the current CUDA stream is being captured into a graph (host reads and syncs are forbidden then)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class GraphedStep:
    """``model.step(x, state)`` for one input shape, captured in a CUDA graph and replayed on every call.

    ``example`` (and each tensor in ``step_inputs``, e.g. a per-position modality id) fixes the shape, dtype and device
    of what later calls pass. Warming up runs ``step`` ``warmup`` times and then restores the state, so capturing leaves
    ``state`` as it was. Each call copies its inputs into the graph's input buffers, replays the graph (``state``
    advances in place) and returns the step's output: that output lives in the graph's buffers, which the next call
    overwrites, so ``clone()`` what you keep.
    """

    def __init__(
        self, model: nn.Module, state: Any, example: Tensor, *, warmup: int = 3, **step_inputs: Tensor
    ) -> None:
        """Warm ``model.step`` up on a side stream, restore ``state``, and capture one step."""
        if not callable(getattr(model, "step", None)):
            raise TypeError(f"{type(model).__name__} has no step(); only stateful models can be graphed")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (cuBLAS/cuDNN set up their workspaces then), got {warmup}")
        self._inputs = {"x": example, **step_inputs}
        before = dict(tensor_leaves(state))
        tensors = {**self._inputs, **{f"state{path}": t for path, t in before.items()}}
        tensors.update({f"parameter {n}": p for n, p in model.named_parameters()})
        off_gpu = [name for name, t in tensors.items() if t.device.type != "cuda"]
        if off_gpu or not before:
            where = f"these are not on a CUDA device: {', '.join(off_gpu[:5])}" if off_gpu else "the state has none"
            raise ValueError(f"GraphedStep needs the model, its state and the inputs as CUDA tensors; {where}")
        self.model, self.state = model, state
        self._static = {k: v.clone() for k, v in self._inputs.items()}
        saved = {path: t.clone() for path, t in before.items()}
        with torch.no_grad():
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self._step()
                for path, tensor in before.items():
                    tensor.copy_(saved[path])
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.output, new_state = self._step()
        # The state's tensors must be the ones the graph writes: a step that swaps in new tensors (returned or
        # assigned to the state's fields) would leave every replay reading the state as it was at capture.
        replaced = sorted(path for path, t in tensor_leaves(new_state) if before.get(path) is not t)
        replaced += sorted(path for path, t in tensor_leaves(state) if before.get(path) is not t)
        if replaced:
            raise ValueError(
                f"{type(model).__name__}.step replaced state tensors ({', '.join(replaced[:3])}) instead of updating "
                "them in place; a CUDA graph can only replay in-place updates"
            )

    def _step(self) -> tuple[Any, Any]:
        """One call of ``model.step`` on the static input buffers."""
        extras = {k: v for k, v in self._static.items() if k != "x"}
        step: Any = self.model.step
        result: tuple[Any, Any] = step(self._static["x"], self.state, **extras)
        return result

    def __call__(self, x: Tensor, **step_inputs: Tensor) -> Any:
        """Replay once on ``x`` (and the per-position inputs named at capture): ``state`` advances; returns y."""
        given = {"x": x, **step_inputs}
        if given.keys() != self._inputs.keys():
            raise ValueError(f"GraphedStep was captured with inputs {sorted(self._inputs)}; got {sorted(given)}")
        for name, value in given.items():
            buffer = self._static[name]
            if value.shape != buffer.shape or value.dtype != buffer.dtype or value.device != buffer.device:
                raise ValueError(
                    f"input '{name}' must match the capture: expected {tuple(buffer.shape)} {buffer.dtype} on "
                    f"{buffer.device}, got {tuple(value.shape)} {value.dtype} on {value.device}"
                )
            buffer.copy_(value)
        self.graph.replay()
        return self.output
