"""The overrides' records resolve, their predicates and probes decline without CUDA, and on the GPU a failing probe
falls back to the reference with exactly one warning (DESIGN §6)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from edifice import ops
from edifice.plugins import load_object
from edifice_kernels.overrides import OVERRIDES


def test_every_override_names_an_op_and_importable_callables() -> None:
    pytest.importorskip("triton")
    pending = {"gated_rms_norm"}  # its op is proposed for edifice.ops.norm; the kernel is ready for it
    for ov in OVERRIDES:
        assert ov.op in ops.names() or ov.op in pending, ov.op
        assert ov.device == "cuda" and ov.name == f"triton_{ov.op}"
        for ref in (ov.impl, ov.predicate, ov.probe):
            assert ref is not None and callable(load_object(ref)), ref


def test_the_plugin_registers_every_override() -> None:
    for ov in OVERRIDES:
        if ov.op in ops.names():
            names = {impl.name: impl for impl in ops.implementations(ov.op)}
            assert names[ov.name].origin == "kernels"  # the entry point's name
            assert names[ov.name].priority == ov.priority


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_without_cuda_predicates_and_probes_decline() -> None:
    pytest.importorskip("triton")
    x = torch.randn(2, 3, 8)
    for ov in OVERRIDES:
        assert load_object(ov.probe)() is False
    assert load_object("edifice_kernels.rms_norm:supports")(x) is False
    assert ops.selected("rms_norm", x) == "reference"


_FALLBACK = """
import warnings, torch
import edifice_kernels.rms_norm as kernel

def boom():
    raise RuntimeError("this probe fails on purpose")

kernel.probe = boom
from edifice import ops
x = torch.randn(4, 64, device="cuda")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = [ops.rms_norm(x) for _ in range(3)]
    chosen = ops.selected("rms_norm", x)
status = {i.name: i.status for i in ops.implementations("rms_norm")}["triton_rms_norm"]
n = sum(issubclass(w.category, ops.OpWarning) for w in caught)
print(n, chosen, status, all(torch.equal(t, ops.rms_norm.reference(x)) for t in y))
"""


@pytest.mark.gpu
def test_a_failing_probe_falls_back_to_the_reference_with_one_warning() -> None:
    out = subprocess.run([sys.executable, "-c", _FALLBACK], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "reference", "failed", "True"]


@pytest.mark.gpu
def test_the_reference_mode_turns_every_kernel_off() -> None:
    code = (
        "import torch\nfrom edifice import ops\nx = torch.randn(4, 64, device='cuda')\n"
        "print(ops.selected('rms_norm', x))\n"
    )
    env_ref = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**__import__("os").environ, "EDIFICE_OPS": "reference"},
    ).stdout  # fmt: skip
    auto = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert (env_ref.strip(), auto.strip()) == ("reference", "triton_rms_norm")


def test_a_probe_first_called_under_no_grad_still_checks_the_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    # On the GPU the first call that can use a kernel is often a decoding step under no_grad: the probe's backward
    # check must not fail there (it once did, disabling every kernel for the process).
    from edifice_kernels import _common

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    def check(device: torch.device) -> None:
        x = torch.ones(3, requires_grad=True)
        (x * 2).sum().backward()
        assert x.grad is not None

    with torch.no_grad():
        assert _common.cuda_probe(check)
    with torch.inference_mode():
        assert _common.cuda_probe(check)
