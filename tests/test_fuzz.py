"""Registry-wide fuzzing (issue 9): the configs and inputs of every registered entry, through the public API.

* ``test_fuzz_config[<arch>]``: config values drawn within each field's declared type build a model that runs forward
  and backward with finite values, or raise ``ConfigError`` naming a field given
  (:func:`edifice.testing.fuzz.check_config`).
* ``test_fuzz_inputs[<arch>-<category>]``: a valid input corrupted one way (wrong dtype, rank or size, empty batch or
  sequence, out-of-range ids, non-contiguous or channels-last layout, another device) raises ``InputError`` or
  computes the right result (:func:`edifice.testing.fuzz.check_input_fault`).

The default run is derandomized and small: ``CONFIG_EXAMPLES`` config cases per entry and ``INPUT_EXAMPLES`` cases per
entry and input category, fewer per entry as the registry grows so that the total stays near ``CASE_BUDGET``.
``EDIFICE_FUZZ_EXAMPLES=N`` (the ``fuzz`` nox session) runs N fresh random cases per entry and category instead. The
terminal summary counts the cases tried and failed per category (``tests/conftest.py``).
"""

from __future__ import annotations

import os

import pytest

import edifice
from edifice.registry import missing_requirements
from edifice.testing import fuzz

#: Cases the default run tries over the whole registry (config and input cases together), about 40 s on 2 cores.
CASE_BUDGET = 600
ARCHS = edifice.list_architectures()
_FUZZ_EXAMPLES = int(os.environ.get("EDIFICE_FUZZ_EXAMPLES", "0"))
_INPUT_CASES = [(arch, category) for arch in ARCHS for category in fuzz.input_categories(arch)]
#: Examples per entry and per (entry, input category): fixed by EDIFICE_FUZZ_EXAMPLES, else shared out of the budget.
CONFIG_EXAMPLES = _FUZZ_EXAMPLES or max(1, min(4, CASE_BUDGET // 2 // max(len(ARCHS), 1)))
INPUT_EXAMPLES = _FUZZ_EXAMPLES or max(1, min(3, CASE_BUDGET // 2 // max(len(_INPUT_CASES), 1)))
#: The default run tries the same cases every time; a fuzz session draws fresh ones.
DERANDOMIZE = not _FUZZ_EXAMPLES


def _skip_if_unbuildable(arch: str) -> None:
    missing = missing_requirements(arch)
    if missing is not None:
        pytest.skip(missing)


@pytest.mark.parametrize("arch", ARCHS)
def test_fuzz_config(arch: str, record_property: pytest.RecordProperty) -> None:
    _skip_if_unbuildable(arch)
    tally = fuzz.Tally()
    try:
        fuzz.run_cases(
            fuzz.CONFIG_CATEGORY,
            fuzz.config_overrides(arch),
            lambda overrides: fuzz.check_config(arch, overrides),
            examples=CONFIG_EXAMPLES,
            derandomize=DERANDOMIZE,
            tally=tally,
        )
    finally:
        record_property(fuzz.PROPERTY, tally.counts())


@pytest.mark.parametrize(("arch", "category"), _INPUT_CASES, ids=[f"{a}-{c}" for a, c in _INPUT_CASES])
def test_fuzz_inputs(arch: str, category: str, record_property: pytest.RecordProperty) -> None:
    _skip_if_unbuildable(arch)
    tally = fuzz.Tally()
    try:
        fuzz.run_cases(
            category,
            fuzz.input_faults(arch, category),
            lambda fault: fuzz.check_input_fault(arch, fault),
            examples=INPUT_EXAMPLES,
            derandomize=DERANDOMIZE,
            tally=tally,
        )
    finally:
        record_property(fuzz.PROPERTY, tally.counts())
