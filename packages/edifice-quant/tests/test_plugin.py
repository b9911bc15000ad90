"""The distribution's entry point loads, and every entry it registers belongs to the peft family."""

from __future__ import annotations

import edifice
from edifice.plugins import get_registry


def test_the_plugin_loads_and_registers_generative_entries_only() -> None:
    registry = get_registry()
    registry.ensure_loaded()
    records = [r for r in edifice.plugins() if r.distribution == "edifice-quant"]
    assert records and all(r.error is None for r in records)
    ours = [n for n in edifice.list_architectures() if edifice.get_spec(n).distribution == "edifice-quant"]
    assert all(edifice.get_spec(n).family == "peft" for n in ours)
