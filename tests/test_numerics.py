"""Long-sequence bf16 numerics (issue 9): every causal entry at T = 4096 in bf16, and 4096 decoding steps.

* ``test_long_sequence_bf16[<arch>-<device>]``: the model in bf16 (parameters and inputs) runs forward and backward on
  random inputs of T = 4096 positions without NaN or Inf in outputs or gradients.
* ``test_long_decode_bf16[<arch>-<device>]`` (stateful entries): 4096 steps of one position from ``init_state``; every
  output and the final state stay finite.

On the CPU (``slow``) the models are the spec's tiny configs with batch 1 and decoding runs ``CPU_DECODE_STEPS``
steps (Python overhead per step dominates there); on CUDA (``gpu``) they are the default configs with batch 2 and
decode all 4096 steps. One command runs either set and writes a JSON summary where ``EDIFICE_NUMERICS_SUMMARY``
points (``tests/conftest.py`` also prints it)::

    EDIFICE_NUMERICS_SUMMARY=numerics-gpu.json pytest -m gpu tests/test_numerics.py
    EDIFICE_NUMERICS_SUMMARY=numerics-cpu.json pytest -m slow tests/test_numerics.py -n 2
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch
from torch import nn

import edifice
from edifice.registry import missing_requirements

#: Sequence length of the long forward and of the GPU decode.
T_LONG = 4096
#: Decoding steps on the CPU (the GPU decodes T_LONG): ~1 ms of Python per step and layer for a tiny model.
CPU_DECODE_STEPS = int(os.environ.get("EDIFICE_CPU_DECODE_STEPS", "1024"))
#: The user property carrying one summary row to the controller (``tests/conftest.py`` prints and saves them).
PROPERTY = "edifice_numerics"

_ON_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CAUSAL = edifice.list_architectures(causal=True)
STATEFUL = edifice.list_architectures(causal=True, stateful=True)


#: Entries known not to hold at T_LONG, with what fails: each case is a strict xfail, so a fix turns it red until
#: the entry leaves this list (docs/reliability.md tracks them).
KNOWN_LONG_SEQUENCE_FAILURES: dict[str, str] = {}


def _cases(names: list[str], known: Mapping[str, str] | None = None) -> list[Any]:
    known = known or {}
    return [
        pytest.param(
            arch,
            device,
            id=f"{arch}-{device}",
            marks=[
                *(_ON_CUDA if device == "cuda" else [pytest.mark.slow]),
                *([pytest.mark.xfail(strict=True, reason=known[arch])] if arch in known else []),
            ],
        )
        for device in ("cpu", "cuda")
        for arch in names
    ]


@pytest.fixture
def device_lock(request: pytest.FixtureRequest) -> None:
    """On CUDA, hold the GPU's memory alone among the run's workers (default-size models at T = 4096 fill it).

    Decoding keeps only a state and runs in parallel; the forward and backward over 4096 positions take the lock.
    """
    if request.node.callspec.params["device"] == "cuda":
        request.getfixturevalue("cuda_heavy")


def _build(arch: str, device: str) -> nn.Module:
    """The entry in bf16: tiny on the CPU, default size on CUDA; a field bounding the length set to T_LONG."""
    missing = missing_requirements(arch)
    if missing is not None:
        pytest.skip(missing)
    spec = edifice.get_spec(arch)
    overrides = dict(spec.tiny) if device == "cpu" else {}
    fields = {f.name for f in dataclasses.fields(edifice.config(arch))}
    if "max_len" in fields:  # implicit long-convolution filters are sized for max_len positions (hyena)
        overrides["max_len"] = T_LONG
    torch.manual_seed(0)
    return edifice.build(arch, device=device, dtype=torch.bfloat16, **overrides)


@contextlib.contextmanager
def _one_cpu_thread(device: str) -> Iterator[None]:
    """One intra-op thread while a tiny model decodes on the CPU: threads spinning over 1-position steps cost ~30x."""
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _bf16(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}


def _leaves(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _leaves(item)


def _max_abs(tensors: Iterator[torch.Tensor]) -> float:
    """Largest magnitude over the floating tensors (inf or nan when any is not finite)."""
    worst = 0.0
    for t in tensors:
        if t.is_floating_point() and t.numel():
            if not bool(torch.isfinite(t).all()):
                return float("nan")
            worst = max(worst, float(t.detach().abs().max()))
    return worst


@pytest.mark.parametrize(("arch", "device"), _cases(CAUSAL, KNOWN_LONG_SEQUENCE_FAILURES))
@pytest.mark.usefixtures("device_lock")
def test_long_sequence_bf16(arch: str, device: str, record_property: pytest.RecordProperty) -> None:
    model = _build(arch, device).train()
    batch = 1 if device == "cpu" else 2
    inputs = _bf16(edifice.example_inputs(model, batch, generator=torch.Generator().manual_seed(0), T=T_LONG))
    out = model(**inputs)
    outputs = [t for t in _leaves(out) if t.is_floating_point()]
    torch.autograd.backward(torch.stack([t.float().sum() for t in outputs]).sum())
    out_max = _max_abs(iter(outputs))
    grad_max = _max_abs(p.grad for p in model.parameters() if p.grad is not None)
    record_property(PROPERTY, {"test": "forward_backward", "arch": arch, "device": device, "T": T_LONG,
                               "output_max_abs": out_max, "grad_max_abs": grad_max})  # fmt: skip
    assert out_max == out_max, f"{arch}: a bf16 output at T={T_LONG} is NaN or Inf"
    assert grad_max == grad_max, f"{arch}: a bf16 gradient at T={T_LONG} is NaN or Inf"


@pytest.mark.parametrize(("arch", "device"), _cases(STATEFUL))
def test_long_decode_bf16(arch: str, device: str, record_property: pytest.RecordProperty) -> None:
    model = _build(arch, device).eval()
    steps = T_LONG if device == "cuda" else CPU_DECODE_STEPS
    batch = 1 if device == "cpu" else 2
    inputs = _bf16(edifice.example_inputs(model, batch, generator=torch.Generator().manual_seed(0), T=steps))
    key = "input_ids" if "input_ids" in inputs else "x"
    state = model.init_state(batch, max_len=steps, device=device, dtype=torch.bfloat16)
    out_max = 0.0
    with torch.no_grad(), _one_cpu_thread(device):
        for t in range(steps):
            # Other per-position inputs (mixture_of_mamba's modality_mask) go along, one position at a time.
            extra = {k: v[:, t : t + 1] for k, v in inputs.items() if k != key and v.dim() >= 2 and v.shape[1] == steps}
            y, state = model.step(inputs[key][:, t : t + 1], state, **extra)
            step_max = _max_abs(_leaves(y))
            if step_max != step_max:
                out_max = step_max
                break
            out_max = max(out_max, step_max)
    state_max = _max_abs(_leaves(state))
    record_property(PROPERTY, {"test": "decode", "arch": arch, "device": device, "steps": steps,
                               "output_max_abs": out_max, "state_max_abs": state_max})  # fmt: skip
    assert out_max == out_max, f"{arch}: a bf16 decoding output is NaN or Inf (step {t})"
    assert state_max == state_max, f"{arch}: the bf16 state after {steps} steps holds NaN or Inf"
