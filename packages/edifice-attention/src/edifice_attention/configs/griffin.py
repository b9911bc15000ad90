"""Configs of ``griffin`` and ``hawk`` (De et al. 2024, torch-free); the model is :mod:`edifice_attention.griffin`.

Both entries are one model class, :class:`~edifice_attention.griffin.Griffin`: residual blocks whose temporal mixer
is the recurrent block (RG-LRU) or local multi-query attention, cycled through ``block_types``. ``hawk`` is the same
builder with ``block_types`` fixed to ``("recurrent",)`` (no attention blocks); ``griffin`` uses the paper's pattern
of two recurrent blocks then one local-attention block (docs/design/griffin.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Converter, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["BLOCK_TYPES", "CONVERTERS", "LRU_INITS", "SPECS", "GriffinConfig", "HawkConfig"]

DE = Paper(
    "Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient Language Models",
    "De et al.",
    2024,
    "2402.19427",
)

#: Temporal blocks a residual block can hold.
BLOCK_TYPES = ("recurrent", "attention")
#: Initialisations of the RG-LRU's Λ: the paper's (a^c uniform) or the released code's (a² uniform, a ring's area).
LRU_INITS = ("paper", "ring")


@dataclasses.dataclass(kw_only=True)
class GriffinConfig(SequenceConfig):
    """Griffin (De et al. 2024): RG-LRU recurrent blocks and local MQA blocks in a pattern, each with a gated MLP."""

    arch: str = field("griffin", "Registry name of the architecture this config builds.")
    block_types: tuple[str, ...] = field(
        ("recurrent", "recurrent", "attention"),
        "Temporal block of each residual block, cycled over the layers: 'recurrent' (RG-LRU) or 'attention' (local).",
    )
    n_heads: int = field(4, "Heads of the local attention and diagonal blocks of the RG-LRU gates (RecurrentGemma).")
    n_kv_heads: int = field(1, "Key/value heads of the local attention; 1 is multi-query attention (the paper).")
    lru_width: int | None = field(
        None, "Width D_RNN of the recurrent block; None: 4/3·d_model rounded up to a multiple of n_heads (the paper)."
    )
    d_conv: int = field(4, "Temporal width of the recurrent block's causal depthwise Conv1D (§2.3: 4).")
    lru_c: float = field(8.0, "The constant c of the recurrence gate, a_t = a^(c r_t) (eq. 3; c = 8 in the paper).")
    lru_init: str = field(
        "paper", "Λ init: 'paper' (a^c uniform in [lru_min, lru_max], §2.4) or 'ring' (a² uniform: the released code)."
    )
    lru_min: float = field(0.9, "Lower end of the Λ initialisation range (§2.4: 0.9).")
    lru_max: float = field(0.999, "Upper end of the Λ initialisation range (§2.4: 0.999).")
    d_ff: int | None = field(None, "Width of each branch of the gated MLP; None: 3·d_model (expansion factor 3, §2.2).")
    activation: str = field("gelu_tanh", "Activation of the MLP gate and the recurrent block's gate branch (GeLU).")
    window: int = field(1024, "Local attention window: a query sees itself and the window - 1 positions before it.")
    rope_base: float = field(10000.0, "RoPE base of the local attention.")
    rotary_fraction: float = field(0.5, "Fraction of each head's features that RoPE rotates (the released code: half).")
    attention_bias: bool = field(False, "Biases on the attention's q/k/v projections (the output always has one).")
    attention_dropout: float = field(0.0, "Dropout on the attention probabilities (training only).")
    norm_eps: float = field(1e-6, "Epsilon of every RMSNorm.")
    scale_embeddings: bool = field(
        False,
        "Multiply token embeddings by sqrt(d_model) rounded to bfloat16 (RecurrentGemma; the paper's presets: no).",
    )
    logits_soft_cap: float | None = field(
        None, "Soft-cap the logits to cap·tanh(logits / cap) (RecurrentGemma: 30); None: off (the paper's presets)."
    )

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "local_attn_window": "window",
        "window_size": "window",
        "attention_window_size": "window",
        "conv1d_width": "d_conv",
    }

    def validate(self) -> None:
        """Check sizes, the block pattern, the attention head split and the Λ initialisation range."""
        super().validate()
        self.check_positive("n_heads", "n_kv_heads", "lru_width", "d_conv", "lru_c", "d_ff", "window")
        self.check_positive("rope_base", "rotary_fraction", "norm_eps", "logits_soft_cap")
        self.check_range("attention_dropout", 0.0, 0.999)
        self.check_choice("lru_init", LRU_INITS)
        self.check_activation("activation")
        if not isinstance(self.block_types, tuple | list) or not self.block_types:
            self.fail("block_types", f"must be a non-empty tuple of {', '.join(map(repr, BLOCK_TYPES))}")
        for kind in self.block_types:
            if kind not in BLOCK_TYPES:
                self.fail("block_types", f"has {kind!r}; valid block types: {', '.join(map(repr, BLOCK_TYPES))}")
        if not 0.0 < self.lru_min < self.lru_max < 1.0:
            self.fail("lru_min", f"must satisfy 0 < lru_min < lru_max < 1, got {self.lru_min} and {self.lru_max}")
        if self.lru_width is not None and self.lru_width % self.n_heads:
            self.fail("lru_width", f"must divide into n_heads={self.n_heads} diagonal gate blocks")
        self.check_divides("n_kv_heads", "n_heads")
        if self.has_attention:
            if self.d_model % self.n_heads:
                self.fail("n_heads", f"must divide d_model={self.d_model} (the attention's head size)")
            if self.rotary_dim <= 0 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
                self.fail(
                    "rotary_fraction",
                    f"gives {self.rotary_dim} rotated features of head_dim = d_model / n_heads = {self.head_dim}; "
                    "must be even, > 0 and <= head_dim",
                )
        if not self.rope_base > 1:
            self.fail("rope_base", "must be > 1 (RoPE's frequencies base^(-2i/d) must decrease)")

    def block_type(self, index: int) -> str:
        """The temporal block of layer ``index`` (``block_types`` cycled)."""
        return self.block_types[index % len(self.block_types)]

    @property
    def has_attention(self) -> bool:
        """Whether some layer is a local-attention block."""
        return any(self.block_type(i) == "attention" for i in range(self.n_layers))

    @property
    def rnn_width(self) -> int:
        """The resolved D_RNN: ``lru_width`` or ⌈(4/3)·d_model / n_heads⌉·n_heads."""
        if self.lru_width is not None:
            return self.lru_width
        return self.n_heads * math.ceil(4 * self.d_model / 3 / self.n_heads)

    @property
    def ffn_hidden(self) -> int:
        """The resolved MLP branch width: ``d_ff`` or 3·d_model."""
        return self.d_ff if self.d_ff is not None else 3 * self.d_model

    @property
    def head_dim(self) -> int:
        """Size of one attention head, ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """Features of each head that RoPE rotates, ``int(head_dim * rotary_fraction)``."""
        return int(self.head_dim * self.rotary_fraction)


@dataclasses.dataclass(kw_only=True)
class HawkConfig(GriffinConfig):
    """Hawk (De et al. 2024): Griffin's builder with recurrent blocks only (RG-LRU and gated MLP, no attention)."""

    arch: str = field("hawk", "Registry name of the architecture this config builds.")
    block_types: tuple[str, ...] = field(("recurrent",), "Temporal block of every layer: fixed to the RG-LRU block.")


def _spec(name: str, config: str, summary: str, **extra: object) -> ArchSpec:
    return ArchSpec(
        name=name,
        family="attention",
        distribution="edifice-attention",
        summary=summary,
        paper=DE,
        config=config,
        model="edifice_attention.griffin:Griffin",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        causal=True,
        stateful=True,
        variable_length=True,
        interop=("transformers.RecurrentGemmaForCausalLM",),
        verification="parity:transformers.RecurrentGemmaForCausalLM",
        **extra,  # type: ignore[arg-type]
    )


_TINY = {"d_model": 16, "n_layers": 2, "n_heads": 2, "lru_width": 16, "d_ff": 24, "d_in": 12}

SPECS = (
    _spec(
        "griffin",
        "edifice_attention.configs.griffin:GriffinConfig",
        "Griffin: RG-LRU recurrent blocks mixed with local multi-query attention (2 recurrent : 1 attention).",
        # Two layers at most in a tiny config: one of each block (the full pattern is tested in test_griffin.py).
        tiny={**_TINY, "block_types": ("recurrent", "attention"), "window": 4},
    ),
    _spec(
        "hawk",
        "edifice_attention.configs.griffin:HawkConfig",
        "Hawk: Griffin's stack with RG-LRU recurrent blocks only (real-gated linear recurrence, Conv1D, gated MLP).",
        tiny=_TINY,
        defaults={"block_types": ("recurrent",)},
        fixed=("block_types",),
        alias_of="griffin",
    ),
)

CONVERTERS = (
    Converter(
        "transformers.RecurrentGemmaForCausalLM",
        "griffin",
        "edifice_attention.griffin:from_recurrent_gemma",
        "RecurrentGemma checkpoints (Griffin; hawk when every block is recurrent): input_ids -> soft-capped logits.",
    ),
)
