"""Running a timed re-measurement alone on the machine while pytest-xdist workers share it (torch-free).

CI has 2 CPU cores, often two hyper-threads of one physical core, and runs 2 workers: a check measured while the
other worker is busy takes up to ~1.5x its own cost, and whether it is busy is luck. So when a check goes over the
time limit, its second measurement runs *alone*: every worker holds a shared lock while inside a test, and the
re-measurement takes it exclusively, waiting for the other workers' current tests to end and keeping them from
starting new ones (a gate lock in front of the shared one stops new readers from starving it). The lock files live
in the run's base temporary directory, which every worker's own one is under (pytest's retention policy removes
them). Outside xdist, or without ``fcntl`` (Windows), there is nothing to coordinate with and both are no-ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no flock; the re-measurement then runs beside the other workers
    fcntl = None  # type: ignore[assignment]

__all__ = ["configure", "configured", "in_test", "running_alone"]

_files: dict[str, IO[bytes]] = {}
_run_directory: Callable[[], Path] | None = None
_depth = 0  # nesting of in_test: a test may run pytest in-process (pytester), whose tests nest inside it


def configured() -> bool:
    """Whether a run directory is set (the outermost pytest run of a worker sets it)."""
    return _run_directory is not None


def configure(run_directory: Callable[[], Path] | None) -> None:
    """Coordinate through lock files in ``run_directory()`` (shared by the run's workers); None: do not coordinate."""
    global _run_directory
    _run_directory = run_directory
    for file in _files.values():
        file.close()
    _files.clear()


def _lock_files() -> tuple[IO[bytes], IO[bytes]] | None:
    """This run's gate and main lock files, or None when there are no workers to coordinate with."""
    if fcntl is None or _run_directory is None:
        return None
    for kind in ("gate", "main"):
        if kind not in _files:
            _files[kind] = (_run_directory() / f"edifice-contract-checks.{kind}.lock").open("a+b")
    return _files["gate"], _files["main"]


@contextlib.contextmanager
def in_test() -> Iterator[None]:
    """Hold the shared lock while one test runs (the pytest plugin wraps every test call in it)."""
    global _depth
    files = _lock_files() if _depth == 0 else None
    _depth += 1
    try:
        if files is None:
            yield
            return
        gate, main = files
        fcntl.flock(gate, fcntl.LOCK_EX)  # wait while a re-measurement is queued or running
        fcntl.flock(main, fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)
    finally:
        _depth -= 1


@contextlib.contextmanager
def running_alone() -> Iterator[None]:
    """Run the block while no other worker is inside a test (queued behind other re-measurements)."""
    files = _lock_files()
    if files is None:
        yield
        return
    gate, main = files
    shared = _depth > 0
    if shared:
        fcntl.flock(main, fcntl.LOCK_UN)  # our own shared lock would block the exclusive one
    fcntl.flock(gate, fcntl.LOCK_EX)  # no new test starts anywhere from now on
    fcntl.flock(main, fcntl.LOCK_EX)  # the tests that were running have ended
    try:
        yield
    finally:
        fcntl.flock(main, fcntl.LOCK_SH if shared else fcntl.LOCK_UN)
        fcntl.flock(gate, fcntl.LOCK_UN)
