"""The registry-wide contract on the GPU machine: every architecture x every check, built and run on CUDA.

The CPU run (``test_contract.py``) proves the mechanisms; this one catches what only a device shows: tensors made on
the CPU inside ``forward``, host reads that break under ``torch.compile``, dtype mix-ups under bf16 autocast, and
kernel paths (cuDNN, fused SDPA) that the CPU never takes.
"""

from __future__ import annotations

import pytest
import torch

import edifice
from edifice.registry import missing_requirements
from edifice.testing import CHECKS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CASES = [(arch, check) for arch in edifice.list_architectures() for check in CHECKS]


@pytest.mark.parametrize(("arch", "check"), CASES, ids=[f"{arch}-{check}-cuda" for arch, check in CASES])
def test_contract_on_cuda(arch: str, check: str) -> None:
    missing = missing_requirements(arch)
    if missing is not None:
        pytest.skip(missing)
    CHECKS[check](arch, device="cuda")
