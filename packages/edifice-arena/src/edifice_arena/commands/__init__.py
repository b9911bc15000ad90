"""The ``edifice arena`` and ``edifice train`` commands (each module torch-free at import)."""
