"""Config of ``tcn``: the Temporal Convolutional Network of Bai, Kolter & Koltun 2018 (torch-free).

The model is :mod:`edifice_vision.tcn`: levels of residual blocks of two dilated causal convolutions with weight norm,
dilation ``2^i`` at level ``i`` (§3.2-3.4, Figure 1), so the receptive field is ``1 + 2 (K-1) (2^L - 1)``.
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_vision.configs._temporal import TemporalConfig, temporal_spec

__all__ = ["BAI_2018", "SPECS", "TCNConfig"]

BAI_2018 = Paper(
    "An Empirical Evaluation of Generic Convolutional and Recurrent Networks for Sequence Modeling",
    "Bai, Kolter & Koltun",
    2018,
    "1803.01271",
)


@dataclasses.dataclass(kw_only=True)
class TCNConfig(TemporalConfig):
    """TCN: one residual block per entry of ``channels``, block ``i`` dilated by ``2^i``."""

    arch: str = field("tcn", "Registry name of the architecture this config builds.")
    channels: tuple[int, ...] = field((64, 64, 64, 64), "Output channels of each residual block (one per level).")
    kernel_size: int = field(3, "Taps of every dilated convolution (k in the paper).")
    weight_norm: bool = field(True, "Weight normalisation on every convolution (§3.4).")

    @property
    def receptive_field(self) -> int:
        """Inputs one output sees: ``1 + 2 (K-1) sum_i 2^i`` (two convolutions per level, dilation ``2^i``)."""
        return 1 + 2 * (self.kernel_size - 1) * ((1 << len(self.channels)) - 1)

    def validate(self) -> None:
        """A positive kernel size besides the base checks."""
        super().validate()
        self.check_positive("kernel_size")


SPECS = (
    temporal_spec(
        "tcn",
        summary="TCN: residual blocks of dilated causal convolutions with weight norm, dilation doubling per level.",
        paper=BAI_2018,
        config="edifice_vision.configs.tcn:TCNConfig",
        model="edifice_vision.tcn:TCN",
        tiny={"d_in": 4, "channels": (16, 16), "kernel_size": 3},
        verification="property:receptive_field (exactly 1 + 2(K-1)(2^L-1) past inputs, none from the future)",
    ),
)
