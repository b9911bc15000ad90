"""Config fields shared by the linear-attention entries (``retnet``, ``gla``, ...): torch-free.

:class:`MixerStackConfig` holds the block options every entry of the family has (norm, feed-forward, init; HGRN's
elementwise recurrence included); :class:`LinearAttentionConfig` adds the linear-attention mixer's options (heads,
key/value widths, short convolution, feature map, output gate and norm, chunk size). Each entry subclasses one, sets
the defaults of its paper and adds the fields of its own mechanism (a decay, a gate).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = [
    "BLOCK_NORMS",
    "FFN_KINDS",
    "OUTPUT_GATE_ACTS",
    "OUTPUT_NORMS",
    "LinearAttentionConfig",
    "MixerStackConfig",
    "linear_attention_spec",
]

#: Normalisations of the read-out: RMSNorm (flash-linear-attention), LayerNorm (GroupNorm over heads) or none.
OUTPUT_NORMS = ("rmsnorm", "layernorm", "none")
#: Activations of the output gate: SiLU (RetNet, GLA) or sigmoid (MiniMax-01's lightning attention).
OUTPUT_GATE_ACTS = ("silu", "sigmoid")
#: Norms of the residual blocks.
BLOCK_NORMS = ("rmsnorm", "layernorm")
#: Feed-forward kinds of the residual blocks (``edifice.blocks.ffn.get_ffn``).
FFN_KINDS = ("mlp", "swiglu", "geglu", "reglu", "glu")


@dataclasses.dataclass(kw_only=True)
class MixerStackConfig(SequenceConfig):
    """Pre-norm residual blocks of a token mixer and a feed-forward: the block fields this family's entries share."""

    norm: str = field("rmsnorm", "Norm of the residual blocks and the final norm: 'rmsnorm' or 'layernorm'.")
    norm_eps: float = field(1e-6, "Epsilon of every norm.")
    ffn: str = field("swiglu", "Feed-forward kind of each block: 'swiglu', 'mlp' (GELU), 'geglu', 'reglu' or 'glu'.")
    d_ff: int | None = field(None, "Hidden size of each block's feed-forward; None: the entry's default; 0: none.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of linear and embedding weights.")

    aliases: ClassVar[Mapping[str, str]] = {**SequenceConfig.aliases, "intermediate_size": "d_ff"}

    def validate(self) -> None:
        """Check the block choices are known and sizes positive."""
        super().validate()
        self.check_positive("norm_eps", "init_std")
        self.check_positive("d_ff", allow_zero=True)
        self.check_choice("norm", BLOCK_NORMS)
        self.check_choice("ffn", FFN_KINDS)

    def default_d_ff(self) -> int:
        """The feed-forward hidden size when ``d_ff`` is None: 8/3·d_model rounded up to 8 (gated), else 4·d_model."""
        return 4 * self.d_model if self.ffn == "mlp" else 8 * math.ceil(8 * self.d_model / 3 / 8)

    @property
    def ffn_hidden(self) -> int:
        """The resolved feed-forward hidden size (0: no feed-forward)."""
        return self.d_ff if self.d_ff is not None else self.default_d_ff()


@dataclasses.dataclass(kw_only=True)
class LinearAttentionConfig(MixerStackConfig):
    """Pre-norm blocks of a linear-attention mixer (q/k/v, a decaying matrix state, gated per-head norm) and an FFN."""

    n_heads: int = field(4, "Number of heads, each with its own [head_k, head_v] state.")
    expand_k: float = field(1.0, "Query/key width is d_model * expand_k, split over the heads.")
    expand_v: float = field(1.0, "Value width is d_model * expand_v, split over the heads.")
    use_short_conv: bool = field(False, "Causal depthwise convolution + SiLU on q, k and v.")
    conv_size: int = field(4, "Kernel size of the short convolutions.")
    conv_bias: bool = field(False, "Bias in the short convolutions.")
    feature_map: str | None = field(None, "Activation applied to q and k (an edifice activation name), or None.")
    use_output_gate: bool = field(True, "Multiply the normalised read-out by act(x W_g), act = output_gate_act.")
    output_gate_act: str = field("silu", "Activation of the output gate: 'silu' or 'sigmoid'.")
    output_norm: str = field("rmsnorm", "Norm of the read-out: 'rmsnorm', 'layernorm' (GroupNorm) or 'none'.")
    output_norm_per_head: bool = field(True, "Normalise each head's read-out alone (False: all heads together).")
    chunk_size: int = field(64, "Steps per chunk of the chunked (training) form.")

    def validate(self) -> None:
        """Check widths split evenly over the heads and every choice is known."""
        super().validate()
        self.check_positive("n_heads", "expand_k", "expand_v", "conv_size", "chunk_size")
        self.check_choice("output_norm", OUTPUT_NORMS)
        self.check_choice("output_gate_act", OUTPUT_GATE_ACTS)
        for name in ("expand_k", "expand_v"):
            width = self.d_model * getattr(self, name)
            if not math.isclose(width, round(width)) or round(width) % self.n_heads:
                self.fail(
                    name, f"gives d_model * {name} = {width}; must be an integer dividing by n_heads={self.n_heads}"
                )
        if self.feature_map is not None and not isinstance(self.feature_map, str):
            self.fail("feature_map", "must be an activation name or None")

    @property
    def head_k_dim(self) -> int:
        """Query/key size per head, ``d_model * expand_k / n_heads``."""
        return round(self.d_model * self.expand_k) // self.n_heads

    @property
    def head_v_dim(self) -> int:
        """Value size per head, ``d_model * expand_v / n_heads``."""
        return round(self.d_model * self.expand_v) // self.n_heads


def linear_attention_spec(name: str, config: str, model: str, summary: str, paper: Paper, **extra: object) -> ArchSpec:
    """The spec shared by the linear-attention entries: causal, stateful, padding-exact sequence backbones."""
    return ArchSpec(
        name=name,
        family="attention",
        distribution="edifice-attention",
        summary=summary,
        paper=paper,
        config=config,
        model=model,
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        causal=True,
        stateful=True,
        variable_length=True,
        **extra,  # type: ignore[arg-type]
    )
