"""Exception hierarchy: every Edifice error derives from :class:`EdificeError` and from the matching builtin.

Catching the builtin (``ValueError``, ``KeyError``, ...) keeps working for code that does not know Edifice; catching
:class:`EdificeError` catches everything the library raises on purpose.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EdificeError",
    "InputError",
    "MissingDependency",
    "PluginError",
    "UnknownArchitecture",
]


class EdificeError(Exception):
    """Base class of every error Edifice raises on purpose."""


class ConfigError(EdificeError, ValueError):
    """A configuration field is unknown, ill-typed or out of range; the message names the field and valid choices."""


class InputError(EdificeError, ValueError):
    """A model input does not match the architecture's input spec (shape, dtype or value domain)."""


class UnknownArchitecture(EdificeError, KeyError):
    """No registered architecture has this name; the message names close matches and any install hint."""

    def __str__(self) -> str:
        # KeyError's str() wraps the message in quotes; a readable sentence is more useful here.
        return str(self.args[0]) if self.args else ""


class PluginError(EdificeError, RuntimeError):
    """A plugin failed to load or registered something invalid (a duplicate name, a malformed spec)."""


class MissingDependency(EdificeError, ImportError):
    """An architecture needs a block or architecture that another, uninstalled distribution provides."""


class CheckpointError(EdificeError, ValueError):
    """A checkpoint cannot be loaded: unknown format, missing metadata, or keys and shapes that do not match."""
