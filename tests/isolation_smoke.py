"""Isolation smoke test, run by `nox -s isolation` in a venv holding only edifice-core and one family's wheels.

Checks that the family is discovered through its entry point, that it lists exactly its own architectures (those
the catalogue assigns to it), and that each builds and runs a forward pass -- or, for entries needing another
distribution's blocks, fails to build with the install hint. Then runs the contract kit on every buildable entry.
"""

from __future__ import annotations

import os
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

import edifice
from edifice.catalogue import catalogue
from edifice.errors import MissingDependency
from edifice.registry import missing_requirements
from edifice.testing import check_architecture


def main(distribution: str) -> int:
    """Run the smoke checks for ``distribution``; return a process exit code."""
    records = [r for r in edifice.plugins() if r.distribution == distribution]
    if not records or any(r.status != "loaded" for r in records):
        print(f"FAIL: {distribution} plugin not loaded: {records}")
        return 1
    listed = edifice.list_architectures()
    owners = {name: edifice.get_spec(name).distribution for name in listed}
    foreign = sorted(n for n, d in owners.items() if d != distribution)
    if foreign:
        print(f"FAIL: entries from other distributions are listed: {foreign}")
        return 1
    planned = sorted(n for n, e in catalogue().items() if e.distribution == distribution)
    print(f"{distribution}: {len(listed)} architectures listed ({len(planned)} in the catalogue)")
    if not listed and not _commands_fail_cleanly(distribution):
        return 1
    failures = 0
    buildable = []
    for name in listed:
        missing = missing_requirements(name)
        if missing is None:
            buildable.append(name)
            continue
        try:
            edifice.build(name)
        except MissingDependency as exc:
            print(f"  {name:28s} skipped: {exc}")
            continue
        print(f"  FAIL {name}: built although {missing}")
        failures += 1
    workers = max(1, min(os.cpu_count() or 1, len(buildable)))
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        for name, error in zip(buildable, pool.map(_smoke, buildable), strict=True):
            if error is None:
                print(f"  {name:28s} ok (build, forward, contract)")
            else:
                print(f"  FAIL {name}:\n{error}")
                failures += 1
    return 1 if failures else 0


def _smoke(name: str) -> str | None:
    """Build ``name``, run a forward pass and the contract kit (in a worker); the traceback of a failure, or None."""
    try:
        if not edifice.get_spec(name).needs_fit:  # the contract prepares needs_fit entries (prepare()) first
            model = edifice.build(name, **edifice.get_spec(name).tiny).eval()
            with torch.no_grad():
                model(**edifice.example_inputs(model, 2))
        check_architecture(name)
    except Exception:
        return traceback.format_exc()
    return None


def _commands_fail_cleanly(distribution: str) -> bool:
    """A distribution without architectures (edifice-arena): its commands say so in one line, no traceback."""
    if distribution != "edifice-arena":
        return True
    import contextlib
    import io

    from edifice.cli.main import main as cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli(["arena"])
    lines = err.getvalue().strip().splitlines()
    if code != 1 or len(lines) != 1 or "no architectures are installed" not in lines[0]:
        print(f"FAIL: `edifice arena` without architectures: exit {code}, stderr {err.getvalue()!r}")
        return False
    print(f"  edifice arena without architectures: {lines[0]}")
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
