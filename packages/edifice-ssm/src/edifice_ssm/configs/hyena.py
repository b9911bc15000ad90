"""Config and spec of ``hyena`` (Hyena Hierarchy) and the ``hyena`` block, the Hyena operator alone (torch-free).

The model is :mod:`edifice_ssm.hyena`: GPT-style pre-norm blocks whose token mixer is the order-N Hyena operator
(projections with short depthwise convolutions, N-1 implicit long convolutions, element-wise gates).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, BlockSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["BLOCKS", "POLI_2023", "SPECS", "HyenaConfig"]


@dataclasses.dataclass(kw_only=True)
class HyenaConfig(SequenceConfig):
    """Hyena: pre-norm residual blocks of the order-N Hyena operator and an MLP; no attention."""

    arch: str = field("hyena", "Registry name of the architecture this config builds.")
    order: int = field(2, "Order N of the Hyena recurrence: N gates, N - 1 implicit long convolutions (>= 2).")
    max_len: int = field(
        1024, "Length of the implicit filters (l_max): longer inputs see the last max_len positions; the decode window."
    )
    short_filter_size: int = field(3, "Length of the short depthwise causal convolution of the projections.")
    filter_width: int = field(64, "Width of the implicit filter's FFN (the reference's filter_order).")
    filter_depth: int = field(2, "Hidden Linear+Sin layers of the implicit filter's FFN after its first layer.")
    filter_emb_dim: int = field(33, "Size of the filter's positional features (odd, >= 3: time, cos and sin bands).")
    filter_sine_freq: float = field(14.0, "Initial frequency of the filter FFN's sine activations (w).")
    modulate: bool = field(True, "Multiply the filters by the exponential-decay window (§3.3).")
    window_fast_decay: float = field(0.3, "Window: the fastest channel decays to window_target at t = this.")
    window_slow_decay: float = field(1.5, "Window: the slowest channel decays to window_target at t = this.")
    window_target: float = field(1e-2, "Window: the value the decay reaches at the given (normalized) times.")
    d_ff: int | None = field(None, "Hidden size of each block's MLP; None means 2 * d_model (the released configs).")
    activation: str = field("gelu_tanh", "Activation of the MLP.")
    bias: bool = field(True, "Biases on the operator's input and output projections.")
    norm_eps: float = field(1e-5, "Epsilon of the LayerNorms.")
    init_std: float = field(0.02, "Std of the normal init of every Linear and embedding (GPT-2 scheme).")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "seq_len": "max_len",
        "window_size": "max_len",
        "l_max": "max_len",
        "filter_size": "filter_width",
        "filter_order": "filter_width",
        "short_filter_order": "short_filter_size",
    }

    def validate(self) -> None:
        """Check the order is at least 2, the sizes are positive and the positional features are odd."""
        super().validate()
        self.check_positive("max_len", "short_filter_size", "filter_width", "filter_sine_freq", "d_ff", "norm_eps")
        self.check_positive("window_fast_decay", "window_slow_decay", "window_target", "init_std")
        self.check_positive("filter_depth", allow_zero=True)
        self.check_activation("activation")
        if self.order < 2:
            self.fail("order", "must be >= 2 (order 2 is one long convolution between two gates)")
        if self.filter_emb_dim < 3 or self.filter_emb_dim % 2 == 0:
            self.fail("filter_emb_dim", "must be odd and >= 3 (normalized time plus cosine/sine pairs)")
        if not self.window_target < 1:
            self.fail("window_target", "must be < 1 (the window decays towards it)")

    @property
    def ffn_size(self) -> int:
        """The resolved MLP hidden size (``d_ff`` or ``2 * d_model``)."""
        return self.d_ff if self.d_ff is not None else 2 * self.d_model


POLI_2023 = Paper(
    title="Hyena Hierarchy: Towards Larger Convolutional Language Models",
    authors="Michael Poli, Stefano Massaroli, Eric Nguyen, Daniel Y. Fu, Tri Dao, Stephen Baccus, Yoshua Bengio, "
    "Stefano Ermon, Christopher Ré",
    year=2023,
    arxiv="2302.10866",
)

SPECS = (
    ArchSpec(
        name="hyena",
        family="ssm",
        distribution="edifice-ssm",
        summary="Hyena: implicit long convolutions (FFN of positional features x decay window) and gates, via FFT.",
        paper=POLI_2023,
        config="edifice_ssm.configs.hyena:HyenaConfig",
        model="edifice_ssm.hyena:Hyena",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "d_in": 6,
            "max_len": 16,
            "filter_width": 8,
            "filter_emb_dim": 5,
            "d_ff": 32,
        },
        verification="oracle:Hyena Def. 3.1 recurrence with h = Window(t)·FFN(PE(t)) (§3.3) as direct causal sums, "
        "fp64 (arXiv:2302.10866)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)

BLOCKS = (
    BlockSpec(
        "hyena",
        "edifice_ssm.hyena:HyenaOperator",
        "Order-N Hyena operator: projections + short convs, implicit long convolutions (FFT), gates; can step.",
    ),
)
