"""The plugin registers its overrides without importing Triton or touching CUDA (DESIGN §6: kernels load lazily)."""

from __future__ import annotations

import subprocess
import sys


def test_registering_imports_neither_triton_nor_the_kernels() -> None:
    code = (
        "import sys, edifice.ops, edifice\n"
        "edifice.list_architectures()\n"
        "from edifice.plugins import get_registry\n"
        "get_registry().ensure_loaded()\n"
        "loaded = [m for m in sys.modules if m == 'triton' or m.startswith('edifice_kernels.')]\n"
        "print(sorted(set(loaded) - {'edifice_kernels.plugin', 'edifice_kernels.overrides'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
