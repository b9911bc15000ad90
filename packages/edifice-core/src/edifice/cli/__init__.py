"""The ``edifice`` command-line interface."""
