"""Edifice's pytest plugin for plugin authors and for Edifice itself (opt-in, never auto-loaded).

Enable it in a ``conftest.py`` at the root of the test run::

    pytest_plugins = ["edifice.testing.pytest_plugin"]

It adds:

* the ``signature(name)`` marker (see :func:`edifice.testing.signature`);
* the ``edifice_plugin`` fixture: ``edifice_plugin(plugin_or_specs..., name=None)`` registers a plugin object (or a
  plugin made of ``ArchSpec``/``BlockSpec``/``OpOverride``/``Converter`` items) for one test and returns its
  :class:`~edifice.plugins.PluginRecord`; everything is unregistered at teardown;
* ``--edifice-require-signatures``: collection fails, listing them, when a registered architecture has no test marked
  ``signature(<name>)`` among the collected tests;
* ``--edifice-mutate OP`` (repeatable; ``all`` for every op): runs every collected signature test with
  ``edifice.ops.OP`` swapped for its ready-made wrong implementation (:data:`edifice.testing.mutate.MUTATIONS`).
  A signature test that calls the mutated op must then fail -- it is reported as passing when it does, and as
  failing when it still passes, since it would not notice the mechanism breaking; each test runs once unmutated
  first, and an op it never calls there is not mutated (``unused``: the run would be the same);
* a terminal summary of the contract checks' timing: how many ran, how many went over the budget of
  :data:`edifice.testing.timing.BUDGET` seconds a check (reported, never a failure), each family's total and the
  slowest checks;
* ``--edifice-check-time-limit SECONDS``: the hang guard, after which a check still running fails (default 60 s, or
  the ``EDIFICE_CHECK_TIME_LIMIT`` environment variable; ``0`` disables it);
* the ``cuda_heavy`` fixture: a test that needs much of the GPU's memory (default-size models at T = 4096) takes
  it, and runs while no other such test does on any pytest-xdist worker of the run; after every test that used CUDA
  the worker hands its cached blocks back to the driver (``torch.cuda.empty_cache``), so the memory one worker's test
  freed can serve another worker's (twelve workers sharing an H100 ran out of memory without both);
* under pytest-xdist, each worker's PyTorch intra-op threads are PyTorch's default divided by the number of workers
  (unless ``OMP_NUM_THREADS`` is set): two workers each running two threads on two cores made every check pay for
  the oversubscription (timings varied up to 1.8x).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from edifice.plugins import PluginRecord
from edifice.testing import timing
from edifice.testing.registration import registrar

__all__ = ["cuda_heavy", "edifice_plugin"]

_USER_PROPERTY = "edifice_check_seconds"
_MUTATION_PROPERTY = "edifice_mutation"
_SUMMARY_SIZE = 5


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the ``--edifice-*`` options."""
    group = parser.getgroup("edifice", "Edifice contract kit")
    group.addoption(
        "--edifice-require-signatures",
        action="store_true",
        default=False,
        help="fail collection when a registered architecture has no test marked signature(<name>)",
    )
    group.addoption(
        "--edifice-mutate",
        action="append",
        default=[],
        metavar="OP",
        help="run signature tests with this op swapped for a wrong implementation; they must fail (repeatable; all)",
    )
    group.addoption(
        "--edifice-check-time-limit",
        default=None,
        metavar="SECONDS",
        help=(
            f"hang guard: seconds after which a contract check still running fails (default "
            f"{timing.DEFAULT_TIME_LIMIT:g}, ${timing.ENV_VAR}; 0: none); the {timing.BUDGET:g} s budget is reported"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, apply the hang guard option and start the timing report."""
    config.addinivalue_line("markers", "signature(name): the test proving the defining mechanism of architecture name")
    value = config.getoption("--edifice-check-time-limit")
    if value is not None:
        try:
            timing.set_time_limit(timing.parse_limit(value, source="--edifice-check-time-limit"))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(_TimingReport(), "edifice-timing-report")
    _share_cores_between_workers()
    mutations = config.getoption("--edifice-mutate")
    if mutations:
        from edifice.testing.mutate import MUTATIONS

        if "all" in mutations:
            mutations = list(MUTATIONS)
        unknown = sorted(set(mutations) - set(MUTATIONS))
        if unknown:
            raise pytest.UsageError(f"--edifice-mutate: unknown op(s) {unknown}; known: {', '.join(MUTATIONS)}")
        config.pluginmanager.register(_Mutator(mutations), "edifice-mutator")


def _share_cores_between_workers() -> None:
    """On a pytest-xdist worker, divide PyTorch's default intra-op threads by the workers (``OMP_NUM_THREADS`` wins)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads() // int(workers)))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Undo the hang guard option (in-process pytest runs share this module)."""
    if config.getoption("--edifice-check-time-limit") is not None:
        timing.reset_time_limit()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--edifice-require-signatures``, fail when a registered architecture has no signature test.

    Runs before ``-k``/``-m`` deselection: a signature test counts when it is collected, whether or not it runs.
    """
    if not config.getoption("--edifice-require-signatures"):
        return
    from edifice.registry import list_architectures

    covered = {str(m.args[0]) for item in items for m in item.iter_markers("signature") if m.args}
    missing = sorted(set(list_architectures()) - covered)
    if missing:
        message = (
            f"--edifice-require-signatures: {len(missing)} registered architecture(s) have no test marked "
            f"@signature(<name>) in this session: {', '.join(missing)}. Add one per architecture, proving its "
            "defining mechanism (its spec's `verification`)."
        )
        # A failed collect report, not an exception: pytest (and pytest-xdist, from its workers) then shows it as a
        # collection error and stops before running tests, exactly as for a test module that fails to import.
        report = pytest.CollectReport("edifice-require-signatures", "failed", message, [])
        config.hook.pytest_collectreport(report=report)


@pytest.fixture
def edifice_plugin() -> Iterator[Callable[..., PluginRecord]]:
    """Register plugin objects (or spec items) for this test: ``edifice_plugin(obj_or_specs..., name=None)``."""
    with registrar() as register:
        yield register


@pytest.fixture
def cuda_heavy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run this test while no other ``cuda_heavy`` test runs on any xdist worker of the session (a file lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock; run heavy GPU tests with one worker there
        yield
        return
    # Every worker's base temp is a child of one session folder, so the lock file is shared across workers.
    lock_path = tmp_path_factory.getbasetemp().parent / "edifice-cuda-heavy.lock"
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            _release_cuda_cache()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _release_cuda_cache() -> None:
    """Hand this process's cached, unused CUDA blocks back to the driver (nothing when CUDA never started)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """After each test, free the CUDA memory it cached, for the other workers sharing the GPU."""
    _release_cuda_cache()


class _TimingReport:
    """Carries each test's contract-check timings to the controller (also under xdist) and reports them.

    The report holds checks to :data:`edifice.testing.timing.BUDGET`; going over it is news, not a failure.
    """

    def __init__(self) -> None:
        self.timings: list[timing.Timing] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
        outcome: Any = yield
        if call.when == "call":
            report = outcome.get_result()
            for t in timing.drain():
                report.user_properties.append((_USER_PROPERTY, (t.arch, t.check, t.seconds)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == _USER_PROPERTY:
                arch, check, seconds = cast(tuple[str, str, float], value)
                self.timings.append(timing.Timing(arch, check, seconds))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.timings:
            return
        total = sum(t.seconds for t in self.timings)
        over = [t for t in self.timings if t.seconds > timing.BUDGET]
        guard = timing.time_limit()
        terminalreporter.write_sep(
            "-",
            f"edifice: {len(self.timings)} contract checks, {total:.0f} s; {len(over)} over the {timing.BUDGET:g} s "
            f"budget (reported, not failed; hang guard {f'{guard:g} s' if guard else 'off'})",
        )
        families: dict[str, list[float]] = {}
        for t in self.timings:
            families.setdefault(_family(t.arch), []).append(t.seconds)
        for family, seconds in sorted(families.items(), key=lambda kv: -sum(kv[1])):
            terminalreporter.write_line(f"{sum(seconds):7.1f} s  {family} ({len(seconds)} checks)")
        terminalreporter.write_line("slowest:")
        for t in sorted(self.timings, key=lambda t: -t.seconds)[:_SUMMARY_SIZE]:
            flag = "  over budget" if t.seconds > timing.BUDGET else ""
            terminalreporter.write_line(f"{t.seconds:7.2f} s  {t.arch}-{t.check}{flag}")


def _family(arch: str) -> str:
    """The registry family of ``arch`` ("unregistered" for an architecture a test registered only for a while)."""
    from edifice.errors import UnknownArchitecture
    from edifice.registry import get_spec

    try:
        return get_spec(arch).family
    except UnknownArchitecture:
        return "unregistered"


class _Mutator:
    """Runs signature tests under each mutated op and inverts the verdict where the op was called."""

    def __init__(self, ops: list[str]) -> None:
        self.ops = ops
        self.verdicts: dict[str, dict[str, list[str]]] = {op: {} for op in ops}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        names = [str(m.args[0]) for m in item.iter_markers("signature") if m.args]
        if not names:
            return (yield)
        from edifice.ops._registry import traced
        from edifice.testing.mutate import MUTATIONS, mutate_op

        # The unmutated run first (its failure fails the test as usual), noting the ops it calls: a deterministic test
        # that never calls an op runs unchanged under that op's mutation, so only the called ops are mutated and rerun.
        with traced() as called:
            item.runtest()
        survived = []
        for op in self.ops:
            if op not in called:
                item.user_properties.append((_MUTATION_PROPERTY, (op, "unused", ", ".join(names))))
                continue
            calls = 0

            def counting(*args: Any, _wrong: Callable[..., Any] = MUTATIONS[op], **kwargs: Any) -> Any:
                nonlocal calls
                calls += 1
                return _wrong(*args, **kwargs)

            verdict = "killed"
            with mutate_op(op, counting):
                try:
                    item.runtest()
                except Exception:
                    pass  # the mechanism broke and the signature test noticed: what we want
                else:
                    verdict = "survived" if calls else "unused"
            if verdict == "survived":
                survived.append(op)
            item.user_properties.append((_MUTATION_PROPERTY, (op, verdict, ", ".join(names))))
        if survived:
            raise AssertionError(
                f"signature test of {', '.join(names)} still passes with {', '.join(survived)} mutated "
                "(edifice.testing.mutate.MUTATIONS): it does not prove the mechanism that uses the op"
            )
        # The body already ran, unmutated and under every mutation of an op it calls.
        item.runtest = lambda: None  # type: ignore[method-assign]
        return (yield)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == _MUTATION_PROPERTY:
                op, verdict, names = cast(tuple[str, str, str], value)
                self.verdicts[op].setdefault(verdict, []).append(names)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep("-", "edifice: signature tests under mutated ops")
        for op, verdicts in self.verdicts.items():
            counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(verdicts.items())) or "no signature tests"
            killed = sorted(set(verdicts.get("killed", [])))
            terminalreporter.write_line(f"{op}: {counts}" + (f" (caught by: {'; '.join(killed)})" if killed else ""))
