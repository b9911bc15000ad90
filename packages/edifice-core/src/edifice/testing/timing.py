"""Contract check timing: a budget we report against, and a hang guard (torch-free, for the pytest plugin).

Timing never fails a check on a busy machine. Each check *should* finish within :data:`BUDGET` seconds on 2 CPU cores
(DESIGN §8): the pytest plugin's terminal summary lists the slowest checks, each family's total and how many checks
went over the budget, and CI holds the whole run to its time budget. The only limit enforced is a generous guard
against hangs: a check still running after the guard's seconds of wall-clock time fails. The guard is, in order of
precedence: :func:`set_time_limit` (the pytest option ``--edifice-check-time-limit`` calls it), the environment
variable ``EDIFICE_CHECK_TIME_LIMIT`` (seconds; ``0``, ``off`` or ``none`` disables it) and the default of 60 s.

A check's reported cost is the smaller of its wall-clock and process CPU time (on the CPU), so that time the
scheduler gave to other processes does not count; the guard uses the wall clock, since a hang burns no CPU.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = [
    "BUDGET",
    "DEFAULT_TIME_LIMIT",
    "ENV_VAR",
    "Timing",
    "drain",
    "parse_limit",
    "record",
    "reset_time_limit",
    "set_time_limit",
    "time_limit",
]

#: Seconds one check should take on 2 CPU cores: reported against, never enforced.
BUDGET = 2.0
#: Seconds of wall-clock time after which a check counts as hung and fails.
DEFAULT_TIME_LIMIT = 60.0
#: Environment variable that changes the hang guard.
ENV_VAR = "EDIFICE_CHECK_TIME_LIMIT"

_override: float | None = None
_overridden = False


def parse_limit(text: str, *, source: str = ENV_VAR) -> float | None:
    """Parse a guard in seconds; ``0``/``off``/``none`` give ``None`` (no limit). Raises ``ValueError`` otherwise."""
    value = text.strip().lower()
    if value in ("", "0", "off", "none"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{source}={text!r}: expected seconds (e.g. 60 or 120), or 0/off/none to disable") from None
    if seconds < 0:
        raise ValueError(f"{source}={text!r}: expected a non-negative number of seconds")
    return seconds


def set_time_limit(seconds: float | None) -> None:
    """Set the hang guard for this process, over the environment variable (``None`` disables it)."""
    global _override, _overridden
    _override, _overridden = seconds, True


def reset_time_limit() -> None:
    """Forget :func:`set_time_limit`: the environment variable (or the default) applies again."""
    global _override, _overridden
    _override, _overridden = None, False


def time_limit() -> float | None:
    """The hang guard in seconds that applies now, or ``None`` when disabled."""
    if _overridden:
        return _override
    env = os.environ.get(ENV_VAR)
    return DEFAULT_TIME_LIMIT if env is None else parse_limit(env)


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long one check took on one architecture."""

    arch: str
    check: str
    seconds: float


_recorded: list[Timing] = []


def record(timing: Timing) -> None:
    """Remember one check's timing until the next :func:`drain` (the pytest plugin reports the slowest)."""
    _recorded.append(timing)


def drain() -> list[Timing]:
    """The timings recorded since the last call, oldest first."""
    out = list(_recorded)
    _recorded.clear()
    return out
