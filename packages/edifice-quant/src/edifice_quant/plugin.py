"""Entry point of edifice-quant: registers the specs each ``configs/<arch>.py`` declares (torch-free)."""

from __future__ import annotations

from collections.abc import Callable

from edifice import hookimpl
from edifice.plugins import collect_specs

_CONFIGS = "edifice_quant.configs"


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    """Register the architectures (each ``configs/<arch>.py`` lists its ``SPECS``)."""
    for spec in collect_specs(_CONFIGS):
        register(spec)


@hookimpl
def register_blocks(register: Callable[..., None]) -> None:
    """Register the mixers other distributions' hybrids reuse by name (``BLOCKS`` in the config modules)."""
    for block in collect_specs(_CONFIGS, "BLOCKS"):
        register(block)


@hookimpl
def register_converters(register: Callable[..., None]) -> None:
    """Register checkpoint converters (``CONVERTERS`` in the config modules)."""
    for converter in collect_specs(_CONFIGS, "CONVERTERS"):
        register(converter)
