"""Config of ``tnn``: the Toeplitz Neural Network (torch-free); the model is :mod:`edifice_attention.tnn`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_attention.configs._linear_attention import MixerStackConfig, linear_attention_spec

__all__ = ["SPECS", "TNNConfig"]

QIN = Paper("Toeplitz Neural Network for Sequence Modeling", "Qin et al.", 2023, "2305.04749")


@dataclasses.dataclass(kw_only=True)
class TNNConfig(MixerStackConfig):
    """TNN (Qin et al., ICLR 2023): Gated Toeplitz Units whose Toeplitz coefficients come from a relative position
    encoder (a small MLP of the offset) times an exponential decay γ^|i-j|, and GLU channel mixers."""

    arch: str = field("tnn", "Registry name of the architecture this config builds.")
    ffn: str = field("glu", "Channel mixer of each block: 'glu' (the paper's GLU, activation `activation`) or others.")
    d_ff: int | None = field(None, "Hidden size of the GLU; None: d_model (the paper's glu_dim = embed_dim).")
    expand_ratio: float = field(3.0, "GTU width d1 = d_model * expand_ratio (the paper: 3).")
    rpe_dim: int = field(32, "Width of the relative position encoder's hidden layers.")
    rpe_layers: int = field(3, "Hidden layers of the relative position encoder (norm, activation, linear each).")
    rpe_activation: str = field("relu", "Activation inside the relative position encoder.")
    activation: str = field("silu", "Activation of the GTU's u and v branches and of the GLU.")
    causal: bool = field(True, "Causal Toeplitz matrix (lower triangular); False: two-sided (not stateful).")
    use_decay: bool = field(True, "Multiply the coefficient of offset k by γ^k (the exponential decay bias).")
    gamma: float = field(0.99, "Decay rate γ in (0, 1].")
    bias: bool = field(True, "Biases in the GTU projections and the encoder.")
    max_len: int = field(2048, "Positions a decoding state holds (the Toeplitz kernel spans the whole history).")

    aliases: ClassVar[Mapping[str, str]] = {**MixerStackConfig.aliases, "seq_len": "max_len", "window_size": "max_len"}

    def validate(self) -> None:
        """Positive widths, γ in (0, 1], known activations."""
        super().validate()
        self.check_positive("expand_ratio", "rpe_dim", "max_len")
        self.check_positive("rpe_layers", allow_zero=True)
        if not 0 < self.gamma <= 1:
            self.fail("gamma", f"must be in (0, 1], got {self.gamma}")
        self.check_activation("rpe_activation", "activation")
        width = self.d_model * self.expand_ratio
        if not math.isclose(width, round(width)) or round(width) < 1:
            self.fail("expand_ratio", f"gives d_model * expand_ratio = {width}; must be a positive integer")

    def default_d_ff(self) -> int:
        """The GLU's hidden size when ``d_ff`` is None: d_model (the paper's glu_dim)."""
        return self.d_model

    @property
    def inner_dim(self) -> int:
        """GTU width ``d1 = d_model * expand_ratio``."""
        return round(self.d_model * self.expand_ratio)


SPECS = (
    linear_attention_spec(
        "tnn",
        "edifice_attention.configs.tnn:TNNConfig",
        "edifice_attention.tnn:TNN",
        "Toeplitz Neural Network: Gated Toeplitz Units (RPE-MLP coefficients × γ^|i-j|, FFT product) and GLUs.",
        QIN,
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "d_in": 12,
            "expand_ratio": 2.0,
            "rpe_dim": 8,
            "rpe_layers": 1,
            "max_len": 32,
        },
        verification="oracle:fp64 explicit Toeplitz matrix T_ij = γ^(i-j) RPE(i-j) applied to the GTU's v",
        reasons={
            "stateful": "the Toeplitz kernel spans the whole history: the state is a buffer of every past GTU "
            "input (max_len positions), and each step re-applies the kernel to it",
        },
    ),
)
