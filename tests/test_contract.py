"""The registry-wide contract (DESIGN §8): every registered architecture x every check, with its tiny config.

Test ids read ``<architecture>-<check>`` (e.g. ``decoder_only-gradients``); run one entry with ``-k decoder_only``
or one check everywhere with ``-k gradients``. Entries whose required blocks or architectures are not installed are
skipped with the install hint (the `isolation` session); the `tests` session installs everything and covers them.
"""

from __future__ import annotations

import pytest

import edifice
from edifice.registry import missing_requirements
from edifice.testing import CHECKS

CASES = [(arch, check) for arch in edifice.list_architectures() for check in CHECKS]


@pytest.mark.parametrize(("arch", "check"), CASES, ids=[f"{arch}-{check}" for arch, check in CASES])
def test_contract(arch: str, check: str) -> None:
    missing = missing_requirements(arch)
    if missing is not None:
        pytest.skip(missing)
    CHECKS[check](arch)
