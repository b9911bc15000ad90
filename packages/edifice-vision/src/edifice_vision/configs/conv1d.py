"""Config of ``conv1d``: the classic 1-D convolutional network over a sequence (LeCun et al. 1998), torch-free.

The model is :mod:`edifice_vision.conv1d`: a stack of convolution -> activation -> dropout layers over time, one per
entry of ``channels``/``kernel_sizes``, causal by default (stateful) or centred.
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_vision.configs._temporal import TemporalConfig, temporal_spec

__all__ = ["LECUN_1998", "SPECS", "Conv1dConfig"]

LECUN_1998 = Paper(
    "Gradient-Based Learning Applied to Document Recognition",
    "LeCun, Bottou, Bengio & Haffner",
    1998,
    url="https://doi.org/10.1109/5.726791",
)


@dataclasses.dataclass(kw_only=True)
class Conv1dConfig(TemporalConfig):
    """A 1-D CNN: layer ``i`` convolves with ``kernel_sizes[i]`` taps to ``channels[i]`` channels."""

    arch: str = field("conv1d", "Registry name of the architecture this config builds.")
    kernel_sizes: tuple[int, ...] = field((3, 3), "Taps of each layer's convolution (one per entry of channels).")

    @property
    def receptive_field(self) -> int:
        """Inputs one output sees: ``1 + sum_i (K_i - 1)``."""
        return 1 + sum(k - 1 for k in self.kernel_sizes)

    def validate(self) -> None:
        """One positive kernel size per layer besides the base checks."""
        super().validate()
        if len(self.kernel_sizes) != len(self.channels) or any(k < 1 for k in self.kernel_sizes):
            self.fail("kernel_sizes", f"must give one positive kernel size per layer ({len(self.channels)} layers)")


SPECS = (
    temporal_spec(
        "conv1d",
        summary="Classic 1-D CNN over a sequence: convolution, activation and dropout layers, causal and stateful.",
        paper=LECUN_1998,
        config="edifice_vision.configs.conv1d:Conv1dConfig",
        model="edifice_vision.conv1d:Conv1d",
        tiny={"d_in": 4, "channels": (8, 8), "kernel_sizes": (3, 2)},
        verification="oracle:y_t = b + sum_k W_k x_(t-K+1+k) per layer, fp64 (and its exact receptive field)",
    ),
)
