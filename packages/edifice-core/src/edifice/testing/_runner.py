"""How a contract check runs: set-up, warm-ups, seeding, timing, and failure messages naming arch and check.

:func:`contract_check` turns ``body(case)`` -- the logic of one check -- into the public function
``check_<name>(name, *, overrides=None, device=None) -> CheckResult``. One-time process costs (importing TorchDynamo,
the model's module, first autograd and autocast calls) are paid before the clock starts. A check's time is recorded
for the report (:mod:`edifice.testing.timing`), never judged: only a check that hangs past the guard fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Protocol

import pytest
import torch

from edifice.errors import MissingDependency
from edifice.testing import timing
from edifice.testing._harness import SEED, Case, ContractError
from edifice.testing.tol import exact_fp32

__all__ = ["CheckFunction", "CheckHung", "CheckResult", "contract_check", "first_lines", "hang_guard", "warm_up"]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one check on one architecture that did not fail."""

    arch: str
    check: str
    status: Literal["passed", "skipped"]
    seconds: float
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{self.arch}: {self.check}: {self.status} in {self.seconds:.2f} s{extra}"


class CheckFunction(Protocol):
    """The signature every contract check has."""

    __name__: str

    def __call__(
        self, name: str, *, overrides: Mapping[str, Any] | None = None, device: str | torch.device | None = None
    ) -> CheckResult: ...


# -- warm-ups: one-time process costs that must not count against a check's time limit ---------------------------------
@functools.cache
def _warm_autograd() -> None:
    w = torch.ones(2, requires_grad=True)
    torch.autograd.backward((w * 2).sum())


@functools.cache
def _warm_autocast() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.ones(2, 2) @ torch.ones(2, 2)


@functools.cache
def _warm_meta() -> None:
    # Random initialisers on the meta device run Python references that import TorchDynamo (seconds, once).
    torch.empty(1, device="meta").normal_()


@functools.cache
def _warm_compile() -> None:
    import torch._dynamo  # importing TorchDynamo takes seconds, once per process

    torch.compile(lambda t: t + 1, fullgraph=True, backend="eager")(torch.ones(2))
    torch._dynamo.reset()


_WARMUPS: dict[str, Callable[[], None]] = {
    "autograd": _warm_autograd,
    "autocast": _warm_autocast,
    "compile": _warm_compile,
    "meta": _warm_meta,
}


def warm_up() -> None:
    """Pay the one-time process costs the checks exclude from their timing (e.g. importing TorchDynamo) now."""
    for warm in _WARMUPS.values():
        warm()


class CheckHung(BaseException):
    """Raised inside a check that ran past the hang guard (a BaseException, so that model code cannot swallow it)."""


@contextlib.contextmanager
def hang_guard(seconds: float | None) -> Iterator[None]:
    """Interrupt the block with :class:`CheckHung` after ``seconds`` of wall-clock time (``None``: no guard).

    Uses a real-time interval timer, so it acts only on POSIX, in the main thread (where pytest runs tests), and when
    no other timer is armed (pytest-timeout's, say); elsewhere the caller's after-the-fact check is the guard.
    """
    if seconds is None:
        yield
        return
    usable = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )
    if not usable:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise CheckHung(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def contract_check(check: str, *, warm: tuple[str, ...] = ()) -> Callable[[Callable[[Case], None]], CheckFunction]:
    """Turn ``body(case)`` into a public check: set-up, seeding, timing, and messages naming arch and check."""

    def decorate(body: Callable[[Case], None]) -> CheckFunction:
        def attempt(case: Case, guard: float | None) -> float:
            """Run the body once (seeded, global RNG restored after) and return its cost in seconds.

            The cost is the smaller of wall-clock and process CPU time: on a shared machine (pytest-xdist workers,
            other jobs) the wall clock also counts time the scheduler gave to other processes, and with several
            intra-op threads CPU time adds the threads up; the smaller one is what the check takes on its own.
            """
            devices = [case.device.index or 0] if case.device.type == "cuda" else []
            case.notes.clear()
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                with hang_guard(guard), torch.random.fork_rng(devices=devices), exact_fp32():
                    torch.manual_seed(SEED)
                    body(case)
                if case.device.type == "cuda":  # GPU work runs asynchronously: only the wall clock sees it
                    torch.cuda.synchronize(case.device)
            except ContractError as exc:
                raise ContractError(f"{case.name}: {check}: {exc}") from None
            except CheckHung as exc:
                assert guard is not None  # only an armed guard raises it
                raise ContractError(f"{case.name}: {check}: {_hung(exc, guard)}") from None
            except Exception as exc:
                raise ContractError(f"{case.name}: {check}: raised {type(exc).__name__}: {first_lines(exc)}") from exc
            wall = time.perf_counter() - start
            if guard is not None and wall > guard:  # where no timer could interrupt it
                raise ContractError(f"{case.name}: {check}: {_hung(f'took {wall:.1f} s', guard)}")
            if case.device.type == "cuda":
                return wall
            return min(wall, time.process_time() - start_cpu)

        def run(
            name: str, *, overrides: Mapping[str, Any] | None = None, device: str | torch.device | None = None
        ) -> CheckResult:
            try:
                case = Case.create(name, check, overrides, device)
            except MissingDependency as exc:
                pytest.skip(f"{check}: {str(exc).removeprefix(f'{name}: ')}")
            for kind in warm:
                _WARMUPS[kind]()
            seconds = attempt(case, timing.time_limit())
            timing.record(timing.Timing(name, check, seconds))
            return CheckResult(name, check, "passed", seconds, tuple(case.notes))

        run.__name__ = f"check_{check}"
        run.__qualname__ = run.__name__
        run.__doc__ = body.__doc__
        return run

    return decorate


def _hung(what: object, guard: float) -> str:
    return (
        f"{what}: over the {guard:g} s hang guard (a check should take about {timing.BUDGET:g} s; "
        f"{timing.ENV_VAR} changes the guard)"
    )


def first_lines(exc: BaseException, n: int = 12) -> str:
    """The first ``n`` lines of an exception's message (compile errors run to pages)."""
    lines = str(exc).strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")
