"""The contract test kit (DESIGN §8): what Edifice runs on every architecture, for plugin authors as well.

* :func:`check_architecture` and the ten checks of :data:`CHECKS` (``check_build`` ... ``check_stochastic``), each
  taking a registry name and building it with its spec's ``tiny`` config;
* :mod:`edifice.testing.tol`: the contract's tolerances and comparisons that report the worst element;
* :func:`mutate_op` with ready-made wrong op implementations, to prove that signature tests detect a broken mechanism;
* :func:`redraw_parameters`: seeded noise on every parameter before a parity test, so no constant initialisation
  (zero biases, unit gains) hides a wrong mapping;
* :func:`signature`: the marker of an architecture's signature test;
* :func:`registered` / :func:`registrar` / :func:`make_plugin`: register a plugin object for one test (the
  ``edifice_plugin`` fixture of the opt-in pytest plugin ``edifice.testing.pytest_plugin`` uses them).

A third-party distribution runs the same contract in its own tests::

    import pytest
    from edifice.testing import CHECKS


    @pytest.mark.parametrize("check", CHECKS)
    def test_contract(check):
        CHECKS[check]("foo_net")

Importing this package is cheap; the torch-backed parts load on first use. It needs pytest (the ``testing`` extra).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edifice.testing.markers import signature
from edifice.testing.registration import make_plugin, registered, registrar

__all__ = [
    "CHECKS",
    "CheckResult",
    "ContractError",
    "check_architecture",
    "check_bad_inputs",
    "check_batch_independence",
    "check_bf16_and_compile",
    "check_build",
    "check_causality",
    "check_forward",
    "check_gradients",
    "check_save_load",
    "check_stateful",
    "check_stochastic",
    "make_plugin",
    "mutate_op",
    "redraw_parameters",
    "registered",
    "registrar",
    "signature",
    "tol",
    "warm_up",
]

_LAZY = {
    **{name: "edifice.testing.contract" for name in __all__ if name.startswith(("check", "CHECK", "Check"))},
    "ContractError": "edifice.testing.contract",
    "mutate_op": "edifice.testing.mutate",
    "redraw_parameters": "edifice.testing.redraw",
    "warm_up": "edifice.testing.contract",
}

if TYPE_CHECKING:
    from edifice.testing import tol
    from edifice.testing.contract import (
        CHECKS,
        CheckResult,
        ContractError,
        check_architecture,
        check_bad_inputs,
        check_batch_independence,
        check_bf16_and_compile,
        check_build,
        check_causality,
        check_forward,
        check_gradients,
        check_save_load,
        check_stateful,
        check_stochastic,
        warm_up,
    )
    from edifice.testing.mutate import mutate_op
    from edifice.testing.redraw import redraw_parameters


def __getattr__(name: str) -> Any:
    if name == "tol":
        return importlib.import_module("edifice.testing.tol")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edifice.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
