"""The ``signature`` marker: tags the test that proves an architecture's defining mechanism (DESIGN §8)."""

from __future__ import annotations

import pytest

__all__ = ["signature"]


def signature(name: str) -> pytest.MarkDecorator:
    """``pytest.mark.signature(name)``: use as ``@signature("decoder_only")`` on the entry's signature test."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"signature() takes an architecture name, got {name!r}")
    return pytest.mark.signature(name)
