"""Re-measurements run alone: a worker inside running_alone() waits for other workers' tests and holds off new ones.

Each worker is a subprocess of its own (the test session's own worker coordination stays untouched).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edifice.testing import _solo

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl.flock on Windows: nothing is coordinated")

WORKER = """
import sys, time
from pathlib import Path
from edifice.testing import _solo
directory, role = Path(sys.argv[1]), sys.argv[2]
_solo.configure(lambda: directory)
with _solo.in_test():
    if role == "busy":  # a 0.5 s test, then the time it ended
        print("started", flush=True)
        time.sleep(0.5)
        (directory / "busy-ended").write_text(str(time.monotonic()))
    else:  # a check re-measured alone: the time it began
        with _solo.running_alone():
            (directory / "alone-began").write_text(str(time.monotonic()))
"""


def _worker(directory: Path, role: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(directory), role], stdout=subprocess.PIPE, text=True)


def test_running_alone_waits_for_the_other_workers_test(tmp_path: Path) -> None:
    busy = _worker(tmp_path, "busy")
    assert busy.stdout is not None and busy.stdout.readline().strip() == "started"
    alone = _worker(tmp_path, "alone")
    assert alone.wait(30) == 0 and busy.wait(30) == 0
    began, ended = (float((tmp_path / name).read_text()) for name in ("alone-began", "busy-ended"))
    assert ended <= began, "running_alone() began while another worker was inside a test"


def test_without_a_run_directory_nothing_is_coordinated() -> None:
    if _solo.configured():
        pytest.skip("this session's workers coordinate: the no-op path is for single-process runs")
    with _solo.in_test(), _solo.running_alone():
        pass
