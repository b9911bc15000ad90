"""Cross-package tests: terminal summaries of the fuzz tests' counts and of the long-sequence numerics.

Both come from the tests' user properties, so they work under pytest-xdist too. ``EDIFICE_NUMERICS_SUMMARY=path``
also writes the numerics rows as JSON (tests/test_numerics.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

_FUZZ_PROPERTY = "edifice_fuzz"  # edifice.testing.fuzz.PROPERTY, not imported: that module needs hypothesis
_NUMERICS_PROPERTY = "edifice_numerics"  # tests/test_numerics.py's PROPERTY
_fuzz_counts: dict[str, list[int]] = {}
_numerics: list[dict[str, Any]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the fuzz tests' ``{category: (tried, failed)}`` counts and the numerics tests' rows."""
    if report.when != "call":
        return
    for key, value in report.user_properties:
        if key == _NUMERICS_PROPERTY:
            _numerics.append({**dict(value), "outcome": report.outcome})
        if key == _FUZZ_PROPERTY:
            for category, (tried, failed) in dict(value).items():
                counts = _fuzz_counts.setdefault(category, [0, 0])
                counts[0] += tried
                counts[1] += failed


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fuzz cases per category and the numerics rows, for the tests that ran."""
    if _numerics:
        _numerics_summary(terminalreporter)
    if not _fuzz_counts:
        return
    from edifice.testing.fuzz import Tally

    tally = Tally()
    tally.add({category: (tried, failed) for category, (tried, failed) in _fuzz_counts.items()})
    terminalreporter.write_sep("-", "edifice: fuzz cases per category")
    for line in tally.lines():
        terminalreporter.write_line(line)


def _numerics_summary(terminalreporter: Any) -> None:
    rows = sorted(_numerics, key=lambda r: (r["test"], r["device"], r["arch"]))
    terminalreporter.write_sep("-", "edifice: bf16 long-sequence numerics (max |value|; nan = not finite)")
    for r in rows:
        length = f"T={r['T']}" if "T" in r else f"{r['steps']} steps"
        other = f"grad {r['grad_max_abs']:.3g}" if "grad_max_abs" in r else f"state {r['state_max_abs']:.3g}"
        terminalreporter.write_line(
            f"{r['outcome']:<7} {r['test']:<16} {r['device']:<4} {r['arch']:<28} {length:<12} "
            f"output {r['output_max_abs']:.3g}  {other}"
        )
    target = os.environ.get("EDIFICE_NUMERICS_SUMMARY")
    if target:
        Path(target).write_text(json.dumps(rows, indent=1) + "\n")
        terminalreporter.write_line(f"numerics summary written to {target}")
