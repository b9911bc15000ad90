"""How a contract check runs: set-up, warm-ups, seeding, timing, and failure messages naming arch and check.

:func:`contract_check` turns ``body(case)`` -- the logic of one check -- into the public function
``check_<name>(name, *, overrides=None, device=None) -> CheckResult``. One-time process costs (importing TorchDynamo,
the model's module, first autograd and autocast calls) are paid before the clock starts; a check over the time limit
is run once more, so that lazy imports inside the model's own modules do not count, and fails if still too slow.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import pytest
import torch

from edifice.errors import MissingDependency
from edifice.testing import _solo, timing
from edifice.testing._harness import SEED, Case, ContractError
from edifice.testing.tol import exact_fp32

__all__ = ["CheckFunction", "CheckResult", "contract_check", "first_lines", "warm_up"]


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


def contract_check(check: str, *, warm: tuple[str, ...] = ()) -> Callable[[Callable[[Case], None]], CheckFunction]:
    """Turn ``body(case)`` into a public check: set-up, seeding, timing, and messages naming arch and check."""

    def decorate(body: Callable[[Case], None]) -> CheckFunction:
        def attempt(case: Case) -> float:
            """Run the body once (seeded, global RNG restored after) and return its cost in seconds.

            The cost is the smaller of wall-clock and process CPU time: on a shared machine (pytest-xdist workers,
            other jobs) the wall clock also counts time the scheduler gave to other processes, and with several
            intra-op threads CPU time adds the threads up; the smaller one is what the check takes on its own.
            """
            devices = [case.device.index or 0] if case.device.type == "cuda" else []
            case.notes.clear()
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                with torch.random.fork_rng(devices=devices), exact_fp32():
                    torch.manual_seed(SEED)
                    body(case)
            except ContractError as exc:
                raise ContractError(f"{case.name}: {check}: {exc}") from None
            except Exception as exc:
                raise ContractError(f"{case.name}: {check}: raised {type(exc).__name__}: {first_lines(exc)}") from exc
            if case.device.type == "cuda":  # GPU work runs asynchronously: only the wall clock sees it
                torch.cuda.synchronize(case.device)
                return time.perf_counter() - start
            return min(time.perf_counter() - start, time.process_time() - start_cpu)

        def run(
            name: str, *, overrides: Mapping[str, Any] | None = None, device: str | torch.device | None = None
        ) -> CheckResult:
            try:
                case = Case.create(name, check, overrides, device)
            except MissingDependency as exc:
                pytest.skip(f"{check}: {str(exc).removeprefix(f'{name}: ')}")
            for kind in warm:
                _WARMUPS[kind]()
            seconds = attempt(case)
            limit = timing.time_limit()
            if limit is not None and seconds > limit:
                # A first run also pays one-time costs (lazy imports, first-call initialisation in the model's
                # modules) and the load of other pytest-xdist workers; the check's own cost is what a second run
                # takes with the machine to itself.
                with _solo.running_alone():
                    first, seconds = seconds, attempt(case)
                if seconds > limit:
                    raise ContractError(
                        f"{name}: {check}: took {seconds:.2f} s (first run {first:.2f} s), over the per-check limit "
                        f"of {limit:g} s (on 2 CPU cores, re-measured with no other test running; {timing.ENV_VAR} "
                        "changes it)"
                    )
            timing.record(timing.Timing(name, check, seconds))
            return CheckResult(name, check, "passed", seconds, tuple(case.notes))

        run.__name__ = f"check_{check}"
        run.__qualname__ = run.__name__
        run.__doc__ = body.__doc__
        return run

    return decorate


def first_lines(exc: BaseException, n: int = 12) -> str:
    """The first ``n`` lines of an exception's message (compile errors run to pages)."""
    lines = str(exc).strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")
