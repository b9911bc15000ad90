"""The registry-wide contract (DESIGN §8): every registered architecture x every check, with its tiny config.

Test ids read ``<architecture>-<check>`` (e.g. ``decoder_only-gradients``); run one entry with ``-k decoder_only``
or one check everywhere with ``-k gradients``. Entries whose required blocks or architectures are not installed are
skipped with the install hint (the `isolation` session); the `tests` session installs everything and covers them.

On the GPU machine (``-m gpu``) the same cases run on CUDA, ids ``<architecture>-<check>-cuda``: they catch what only
a device shows (tensors made on the CPU inside ``forward``, host reads under ``torch.compile``, dtype mix-ups under
bf16 autocast, kernel paths such as cuDNN's that the CPU never takes).
"""

from __future__ import annotations

import pytest
import torch

import edifice
from edifice.registry import missing_requirements
from edifice.testing import CHECKS

_ON_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CASES = [
    pytest.param(
        arch, check, device, id=f"{arch}-{check}" + ("-cuda" if device else ""), marks=_ON_CUDA if device else ()
    )
    for device in (None, "cuda")
    for arch in edifice.list_architectures()
    for check in CHECKS
]


@pytest.mark.parametrize(("arch", "check", "device"), CASES)
def test_contract(arch: str, check: str, device: str | None) -> None:
    missing = missing_requirements(arch)
    if missing is not None:
        pytest.skip(missing)
    CHECKS[check](arch, device=device)
