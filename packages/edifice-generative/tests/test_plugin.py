"""The distribution's entry point loads, and every entry it registers belongs to the generative family."""

from __future__ import annotations

import edifice
from edifice.plugins import get_registry


def test_the_plugin_loads_and_registers_generative_entries_only() -> None:
    registry = get_registry()
    registry.ensure_loaded()
    records = [r for r in edifice.plugins() if r.distribution == "edifice-generative"]
    assert records and all(r.error is None for r in records)
    ours = [n for n in edifice.list_architectures() if edifice.get_spec(n).distribution == "edifice-generative"]
    assert all(edifice.get_spec(n).family == "generative" for n in ours)
