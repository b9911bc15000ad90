"""Config and spec of ``striped_hyena`` (StripedHyena, Together AI 2023), and the fields every striped stack shares.

Torch-free. :class:`StripedBlockConfig` holds what StripedHyena 1 and 2 (``hyena_v2``) have in common: pre-norm
RMSNorm blocks of a token mixer and a gated MLP, gated-convolution mixers with a short featurizer FIR, and attention
mixers with RoPE. :class:`StripedHyenaConfig` adds the modal long filters and which layers are attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "StripedBlockConfig", "StripedHyenaConfig", "gated_ffn_size"]


def gated_ffn_size(d_model: int, multiple_of: int = 64) -> int:
    """The reference's default gated-MLP width: ``8/3 d_model`` rounded up to a multiple of ``multiple_of``."""
    inner = int(2 * d_model * 4 / 3)
    return multiple_of * ((inner + multiple_of - 1) // multiple_of)


@dataclasses.dataclass(kw_only=True)
class StripedBlockConfig(SequenceConfig):
    """Fields of a StripedHyena-style stack: gated-convolution and attention mixers, each followed by a gated MLP."""

    n_heads: int = field(4, "Query heads of the attention layers.")
    n_kv_heads: int | None = field(None, "Key/value heads of the attention layers (GQA); None means n_heads.")
    rope_base: float = field(10000.0, "RoPE base of the attention layers (rotary over the full head dimension).")
    attn_bias: bool = field(False, "Biases on the attention projections.")
    bias: bool = field(True, "Biases on the gated convolutions' input and output projections.")
    short_filter_length: int = field(3, "Taps of the featurizer: the depthwise causal FIR on the 3 projections.")
    short_filter_bias: bool = field(True, "Bias on the featurizer FIR.")
    d_ff: int | None = field(None, "Hidden size of the gated MLPs; None means 8/3 d_model rounded up to 64.")
    activation: str = field("silu", "Activation of the gated MLPs (act(W1 x) * W2 x).")
    norm_eps: float = field(1e-5, "Epsilon of the RMSNorms.")
    init_std: float = field(0.02, "Std of the normal init of every Linear and embedding (GPT-2 scheme).")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "conv_kernel_size": "short_filter_length",
        "short_filter_size": "short_filter_length",
    }

    def validate(self) -> None:
        """Check sizes are positive and the heads tile the width."""
        super().validate()
        self.check_positive("n_heads", "n_kv_heads", "rope_base", "short_filter_length", "d_ff", "norm_eps")
        if not self.rope_base > 1:
            self.fail("rope_base", "must be > 1 (RoPE's frequencies base^(-2i/d) must decrease)")
        self.check_positive("init_std")
        self.check_activation("activation")
        if self.has_attention:
            self.check_divides("n_heads", "d_model")
            self.check_divides("n_kv_heads", "n_heads")
            head_dim = self.d_model // self.n_heads
            if head_dim % 2:
                self.fail("n_heads", f"must leave an even head size for RoPE (d_model / n_heads = {head_dim})")

    @property
    def has_attention(self) -> bool:
        """Whether any layer is attention (the head fields are checked only then)."""
        return True

    @property
    def ffn_size(self) -> int:
        """The resolved gated-MLP width (``d_ff`` or the reference's default)."""
        return self.d_ff if self.d_ff is not None else gated_ffn_size(self.d_model)


@dataclasses.dataclass(kw_only=True)
class StripedHyenaConfig(StripedBlockConfig):
    """StripedHyena: Hyena blocks with modal (poles-residues) long filters striped with grouped-query attention."""

    arch: str = field("striped_hyena", "Registry name of the architecture this config builds.")
    d_state: int = field(2, "Complex modes per channel of the modal filter h_t = Re Σ R λ^t (SH-7B uses 2).")
    attention_layers: tuple[int, ...] | None = field(
        None, "Indices of the attention layers; None means every odd layer (SH-7B's striping)."
    )
    dt_min: float = field(0.001, "Smallest initial step Δ of the modal filter's S4D-Lin initialisation.")
    dt_max: float = field(0.1, "Largest initial step Δ of the modal filter's S4D-Lin initialisation.")

    aliases: ClassVar[Mapping[str, str]] = {**StripedBlockConfig.aliases, "state_size": "d_state"}

    def validate(self) -> None:
        """Check the state size, the step-size range and that attention layers exist."""
        super().validate()
        self.check_positive("d_state", "dt_min", "dt_max")
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")
        for index in self.attention_layers or ():
            if not 0 <= index < self.n_layers:
                self.fail("attention_layers", f"indices must lie in [0, n_layers={self.n_layers})")

    @property
    def has_attention(self) -> bool:
        """Whether any layer is attention."""
        return bool(self.attention_indices)

    @property
    def attention_indices(self) -> tuple[int, ...]:
        """The resolved attention layers (``attention_layers`` or the odd ones)."""
        if self.attention_layers is not None:
            return self.attention_layers
        return tuple(range(1, self.n_layers, 2))


STRIPED_HYENA = Paper(
    title="StripedHyena: Moving Beyond Transformers with Hybrid Signal Processing Models",
    authors="Michael Poli, Jue Wang, Stefano Massaroli, Jeffrey Quesnelle, Ryan Carlow, Eric Nguyen, Armin Thomas",
    year=2023,
    url="https://github.com/togethercomputer/stripedhyena",
)

SPECS = (
    ArchSpec(
        name="striped_hyena",
        family="ssm",
        distribution="edifice-ssm",
        summary="StripedHyena: gated long convolutions with modal filters (O(1)-state decoding) striped with GQA+RoPE.",
        paper=STRIPED_HYENA,
        config="edifice_ssm.configs.striped_hyena:StripedHyenaConfig",
        model="edifice_ssm.striped_hyena:StripedHyena",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "d_in": 6, "n_heads": 2, "d_state": 2, "d_ff": 32},
        verification="oracle:modal filter h_t = Re Σ_n R_n λ_n^t: FFT convolution = modal recurrence, fp64",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
