"""The per-check time limit of the contract (torch-free, so the pytest plugin can set it without importing torch).

Each contract check must finish within the limit on 2 CPU cores (DESIGN §8). A check's time is the smaller of its
wall-clock and process CPU time (on the CPU), so that load from other processes does not count against it. The
limit is, in order of precedence: :func:`set_time_limit` (the pytest option ``--edifice-check-time-limit`` calls
it), the environment variable ``EDIFICE_CHECK_TIME_LIMIT`` (seconds; ``0``, ``off`` or ``none`` disables it) and the
default of 2 seconds.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = [
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

#: Seconds one check may take on 2 CPU cores.
DEFAULT_TIME_LIMIT = 2.0
#: Environment variable that changes the limit.
ENV_VAR = "EDIFICE_CHECK_TIME_LIMIT"

_override: float | None = None
_overridden = False


def parse_limit(text: str, *, source: str = ENV_VAR) -> float | None:
    """Parse a limit in seconds; ``0``/``off``/``none`` give ``None`` (no limit). Raises ``ValueError`` otherwise."""
    value = text.strip().lower()
    if value in ("", "0", "off", "none"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{source}={text!r}: expected seconds (e.g. 2 or 2.5), or 0/off/none to disable") from None
    if seconds < 0:
        raise ValueError(f"{source}={text!r}: expected a non-negative number of seconds")
    return seconds


def set_time_limit(seconds: float | None) -> None:
    """Set the limit for this process, over the environment variable (``None`` disables it)."""
    global _override, _overridden
    _override, _overridden = seconds, True


def reset_time_limit() -> None:
    """Forget :func:`set_time_limit`: the environment variable (or the default) applies again."""
    global _override, _overridden
    _override, _overridden = None, False


def time_limit() -> float | None:
    """The limit in seconds that applies now, or ``None`` when disabled."""
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
