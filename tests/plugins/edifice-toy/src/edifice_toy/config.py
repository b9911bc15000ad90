"""Config of ``toy_mixer`` (torch-free, like every Edifice config)."""

from __future__ import annotations

import dataclasses

from edifice import ArchConfig, field


@dataclasses.dataclass(kw_only=True)
class ToyMixerConfig(ArchConfig):
    """A position-wise gated MLP: width, hidden width and input feature size."""

    arch: str = field("toy_mixer", "Registry name.")
    d_in: int = field(16, "Feature size of the input x.")
    d_model: int = field(32, "Output width.")
    d_hidden: int = field(64, "Hidden width of the gated MLP.")

    def validate(self) -> None:
        """All sizes are positive."""
        self.check_positive("d_in", "d_model", "d_hidden")
