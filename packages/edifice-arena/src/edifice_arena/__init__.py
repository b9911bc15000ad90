"""Edifice arena: train registered architectures side by side on the same task, and train one on your data."""

from __future__ import annotations

__all__: list[str] = []
