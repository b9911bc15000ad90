"""Live progress of an arena: one bar per run with its loss and held-out metric, drawn with rich on stderr.

The arena reports through the small :class:`Progress` interface, so the Python API stays silent by default
(:class:`NullProgress`) and the command line shows bars (:class:`RichProgress`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from edifice_arena.training import StepRecord

__all__ = ["NullProgress", "Progress", "RichProgress"]


class Progress:
    """What the arena tells about its progress; this base says nothing."""

    def callback(self, label: str, steps: int) -> Callable[[StepRecord], None]:
        """A Trainer callback for the run ``label`` of ``steps`` steps."""
        return lambda record: None

    def finished(self, label: str, metric: float) -> None:
        """The run ``label`` ended with ``metric`` on the held-out batches."""

    def skipped(self, arch: str, reason: str) -> None:
        """``arch`` left the arena, for ``reason``."""


class NullProgress(Progress):
    """Silence (the default of :func:`edifice_arena.run`)."""


class RichProgress(Progress):
    """Bars on stderr (a plain line per run when stderr is not a terminal); use as a context manager."""

    def __init__(self, metric: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bars

        self.metric = metric
        self.console = Console(stderr=True)
        self.bars = Bars(
            TextColumn("{task.description:<32}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:>7}  {task.fields[metric]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.bars.stop()

    def callback(self, label: str, steps: int) -> Callable[[StepRecord], None]:
        """Add a bar for ``label``; the callback advances it and shows the loss and any evaluation."""
        task = self.bars.add_task(label, total=steps, loss="-", metric="")
        self._tasks[label] = task
        key = f"eval_{self.metric}"

        def update(record: StepRecord) -> None:
            fields: dict[str, Any] = {"loss": f"{record.loss:.3f}"}
            if key in record.metrics:
                fields["metric"] = f"{self.metric} {_format(self.metric, record.metrics[key])}"
            self.bars.update(task, completed=record.step, **fields)

        return update

    def finished(self, label: str, metric: float) -> None:
        """Mark the bar done; without a terminal, print one line."""
        if not self.console.is_terminal:
            self.console.print(
                f"{label}: {self.metric} {_format(self.metric, metric)}", highlight=False, soft_wrap=True
            )

    def skipped(self, arch: str, reason: str) -> None:
        """Print the reason above the bars."""
        self.console.print(f"skipped {arch}: {reason}", highlight=False, markup=False, soft_wrap=True)


def _format(metric: str, value: float) -> str:
    return f"{value:.1%}" if metric == "accuracy" else f"{value:.3f}"
