"""Root conftest: enables Edifice's contract-kit pytest plugin for the whole workspace test run.

Without CUDA, Triton runs through its interpreter (``TRITON_INTERPRET=1``), so edifice-kernels' tests check the
kernels on CPU tensors. Triton reads the variable when it is imported, and test modules of other distributions import
it early (flash-linear-attention's references do): it is set here, before anything is collected.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["edifice.testing.pytest_plugin"]
