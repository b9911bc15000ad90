"""Registered entries pass the contract with every kernel swapped in on the CPU (Triton's interpreter).

The kernels' own tests compare each call with the reference; these run whole models, which is where a kernel's
autograd bookkeeping meets its callers: a decoding state updated in place after the call, an output modified in
place, a step under ``no_grad``. On the GPU the kernels come through dispatch; here ``edifice.ops.swap`` forces them
onto CPU tensors. Titans' MAC variant is the entry that showed the in-place conv-state failure on an H100 (the kernel
saved the caller's ``initial_state``, which ``ShortConvs`` then overwrites with ``copy_``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("triton")

from edifice import ops
from edifice.registry import missing_requirements
from edifice.testing import check_architecture
from edifice_kernels import causal_conv1d, linear_scan, rms_norm, selective_scan

#: Each op with a kernel, and that kernel's public function.
KERNELS: dict[str, Any] = {
    "rms_norm": rms_norm.rms_norm,
    "gated_rms_norm": rms_norm.gated_rms_norm,
    "causal_conv1d": causal_conv1d.causal_conv1d,
    "linear_recurrence": linear_scan.linear_recurrence,
    "log_scan": linear_scan.log_scan,
    "selective_scan": selective_scan.selective_scan,
}

_SLOW = pytest.mark.slow

#: (entry, config overrides, the ops whose kernels it runs): together they run every kernel, with decoding states
#: carried in place. All ``slow`` (5-25 s each under the interpreter); the default run keeps the H100 regression.
ENTRIES = [
    pytest.param("titans", {"variant": "mac", "window_size": 4, "mini_batch_size": 4},
                 {"causal_conv1d", "rms_norm"}, id="titans-mac", marks=_SLOW),
    pytest.param("hawk", {}, {"causal_conv1d", "linear_recurrence", "rms_norm"}, id="hawk", marks=_SLOW),
    pytest.param("mamba", {}, {"causal_conv1d", "rms_norm", "selective_scan"}, id="mamba", marks=_SLOW),
    pytest.param("mamba_ssd", {}, {"causal_conv1d", "gated_rms_norm", "linear_recurrence", "rms_norm"},
                 id="mamba_ssd", marks=_SLOW),
    pytest.param("min_gru", {}, {"log_scan"}, id="min_gru", marks=_SLOW),
    pytest.param("gated_delta_net", {}, {"causal_conv1d", "rms_norm"}, id="gated_delta_net", marks=_SLOW),
]  # fmt: skip

#: The checks that exercise autograd and decoding (compile runs the reference: the predicates decline in a trace).
CHECKS = ["forward", "gradients", "causality", "stateful"]


@contextlib.contextmanager
def kernels_everywhere() -> Iterator[set[str]]:
    """Every kernel swapped in for its op; yields the names of the ops whose kernel ran."""
    ran: set[str] = set()

    def counted(op: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            ran.add(op)
            return fn(*args, **kwargs)

        return call

    with contextlib.ExitStack() as stack:
        for op, fn in KERNELS.items():
            stack.enter_context(ops.swap(op, counted(op, fn)))
        yield ran


@pytest.mark.parametrize(("arch", "overrides", "uses"), ENTRIES)
def test_entries_pass_the_contract_with_the_kernels(arch: str, overrides: dict[str, Any], uses: set[str]) -> None:
    missing = missing_requirements(arch)
    if missing is not None:
        pytest.skip(missing)
    with kernels_everywhere() as ran:
        results = check_architecture(arch, CHECKS, overrides=overrides)
    assert {r.status for r in results.values()} <= {"passed", "skipped"}
    assert ran == uses, f"{arch} ran the kernels of {sorted(ran)}"


def test_titans_mac_gradients_with_the_conv_kernel() -> None:
    # The H100 failure, on the CPU: MAC's segments carry the conv history in place (``state.copy_``) between calls,
    # and the kernel used to save the caller's ``initial_state`` for its backward ("... [2, 48, 3]], which is output
    # 0 of CopyBackwards, is at version 2").
    with ops.swap("causal_conv1d", causal_conv1d.causal_conv1d):
        check_architecture(
            "titans", ["gradients"], overrides={"variant": "mac", "window_size": 4, "mini_batch_size": 4}
        )
