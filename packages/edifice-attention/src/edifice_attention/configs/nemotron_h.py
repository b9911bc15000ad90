"""Config of ``nemotron_h``: NVIDIA's hybrid of Mamba-2, attention and MLP layers (torch-free).

The model is :mod:`edifice_attention.nemotron_h`. Every layer is one pre-RMSNorm residual block whose mixer is named
by a character of the layer pattern (transformers' ``hybrid_override_pattern``): ``"M"`` a Mamba-2 mixer (the
``mamba2`` block that edifice-ssm registers, asked for through ``requires_blocks``), ``"*"`` causal grouped-query
self-attention without positional encoding, ``"-"`` a squared-ReLU MLP without gate. The pattern is cycled over the
``n_layers`` layers; without one it is built from ``attention_every_n`` (docs/design/nemotron_h.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Converter, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["CONVERTERS", "LAYER_KINDS", "SPECS", "NemotronHConfig"]

NVIDIA = Paper(
    "Nemotron-H: A Family of Accurate and Efficient Hybrid Mamba-Transformer Models",
    "NVIDIA",
    2025,
    "2504.03624",
)

#: The characters of a layer pattern and the layer each stands for (transformers' ``hybrid_override_pattern``).
LAYER_KINDS: Mapping[str, str] = {"M": "Mamba-2", "*": "attention", "-": "MLP"}


@dataclasses.dataclass(kw_only=True)
class NemotronHConfig(SequenceConfig):
    """Nemotron-H: pre-RMSNorm residual layers, each a Mamba-2 mixer, NoPE GQA attention or a squared-ReLU MLP."""

    arch: str = field("nemotron_h", "Registry name of the architecture this config builds.")
    n_layers: int = field(8, "Number of layers (each one residual block: a Mamba-2, attention or MLP layer).")
    pattern: str | None = field(
        None,
        "Layer kinds cycled over the layers: 'M' Mamba-2, '*' attention, '-' MLP (e.g. 'M-M-M-*-'); "
        "None builds it from attention_every_n.",
    )
    attention_every_n: int = field(
        4,
        "Without a pattern: every n-th mixer is attention (the rest Mamba-2), each mixer followed by an MLP; 0: none.",
    )
    n_heads: int = field(4, "Attention query heads.")
    n_kv_heads: int | None = field(None, "Attention key/value heads (grouped-query attention); None means n_heads.")
    head_dim: int | None = field(None, "Attention head size; None means d_model // n_heads.")
    window: int | None = field(None, "Sliding attention window (a query sees the last `window` positions); None: full.")
    rope: bool = field(False, "Rotary embeddings on queries and keys (Nemotron-H uses no positional encoding).")
    rope_base: float = field(10000.0, "RoPE base θ when rope is set.")
    attention_dropout: float = field(0.0, "Dropout on the attention probabilities.")
    d_ff: int | None = field(None, "Hidden width of the MLP layers; None means 4 * d_model.")
    activation: str = field("relu2", "Activation of the MLP layers (squared ReLU, as Nemotron-H).")
    mlp_bias: bool = field(False, "Biases on the MLP projections.")
    d_state: int = field(128, "Mamba-2 state size N per head.")
    d_conv: int = field(4, "Kernel size of the Mamba-2 causal depthwise convolution over x, B and C.")
    expand: int = field(2, "Mamba-2 inner width d_inner = expand * d_model.")
    mamba_head_dim: int = field(64, "Mamba-2 head size P; the number of Mamba heads is d_inner / mamba_head_dim.")
    n_groups: int = field(1, "Mamba-2 groups of B and C (divides the number of Mamba heads; Nemotron-H-8B: 8).")
    chunk_size: int = field(128, "Positions per chunk of the SSD algorithm; the result does not depend on it.")
    conv_bias: bool = field(True, "Bias in the Mamba-2 convolution.")
    mamba_bias: bool = field(False, "Biases on the Mamba-2 in_proj and out_proj.")
    dt_min: float = field(0.001, "Smallest initial Mamba-2 step size dt (log-uniform in [dt_min, dt_max]).")
    dt_max: float = field(0.1, "Largest initial Mamba-2 step size dt.")
    dt_init_floor: float = field(1e-4, "Initial Mamba-2 step sizes are clamped to at least this.")
    norm_eps: float = field(1e-5, "Epsilon of every RMSNorm (block norms, Mamba-2's gated norm, the final norm).")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of linear and embedding weights.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "hidden_dim": "d_model",
        "num_hidden_layers": "n_layers",
        "hybrid_override_pattern": "pattern",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "window_size": "window",
        "sliding_window": "window",
        "intermediate_size": "d_ff",
        "mlp_hidden_act": "activation",
        "mamba_d_state": "d_state",
        "ssm_state_size": "d_state",
        "mamba_d_conv": "d_conv",
        "conv_kernel": "d_conv",
        "mamba_expand": "expand",
        "mamba_n_groups": "n_groups",
        "layer_norm_epsilon": "norm_eps",
        "initializer_range": "init_std",
    }

    def validate(self) -> None:
        """Check the pattern, the attention heads and the Mamba-2 sizes fit together."""
        super().validate()
        self.check_positive("n_heads", "n_kv_heads", "head_dim", "window", "d_ff", "d_state", "d_conv", "expand")
        self.check_positive("mamba_head_dim", "n_groups", "chunk_size", "norm_eps", "init_std", "rope_base")
        self.check_positive("dt_min", "dt_max", "dt_init_floor")
        self.check_positive("attention_every_n", allow_zero=True)
        self.check_range("attention_dropout", 0.0, 0.999)
        self.check_activation("activation")
        if self.pattern is not None:
            bad = sorted(set(self.pattern) - set(LAYER_KINDS))
            if not self.pattern or bad:
                kinds = ", ".join(f"{k!r} {v}" for k, v in LAYER_KINDS.items())
                found = f"has {', '.join(map(repr, bad))}" if bad else "is empty"
                self.fail("pattern", f"{found}; layer kinds: {kinds}")
            if len(self.pattern) > self.n_layers:
                self.fail("pattern", f"has {len(self.pattern)} layers but n_layers={self.n_layers}")
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")
        if "*" in self.layer_pattern:
            self.check_divides("n_kv_heads", "n_heads")
            if self.head_dim is None and self.d_model % self.n_heads:
                self.fail("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")
            if self.rope and self.head_size % 2:
                self.fail("head_dim", "must be even for RoPE (features rotate in pairs)")
        if "M" in self.layer_pattern:
            d_inner = self.expand * self.d_model
            if d_inner % self.mamba_head_dim:
                self.fail("mamba_head_dim", f"must divide d_inner = expand * d_model = {d_inner}")
            if self.mamba_heads % self.n_groups:
                self.fail(
                    "n_groups", f"must divide the number of Mamba heads d_inner / mamba_head_dim = {self.mamba_heads}"
                )

    @property
    def layer_pattern(self) -> str:
        """The kind of every layer, one character each (``pattern`` or the ``attention_every_n`` one, cycled)."""
        unit = self.pattern
        if unit is None:
            n = self.attention_every_n
            unit = "M-" if n == 0 else "M-" * (n - 1) + "*-"
        return (unit * (self.n_layers // len(unit) + 1))[: self.n_layers]

    @property
    def head_size(self) -> int:
        """The resolved attention head size (``head_dim`` or ``d_model // n_heads``)."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """The resolved number of key/value heads (``n_kv_heads`` or ``n_heads``)."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """The resolved MLP width (``d_ff`` or ``4 * d_model``)."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def mamba_heads(self) -> int:
        """Number of Mamba-2 heads, ``expand * d_model / mamba_head_dim``."""
        return self.expand * self.d_model // self.mamba_head_dim


SPECS = (
    ArchSpec(
        name="nemotron_h",
        family="transformer",
        distribution="edifice-attention",
        summary="Nemotron-H: mostly Mamba-2 layers with a few NoPE GQA attention layers and squared-ReLU MLP layers.",
        paper=NVIDIA,
        config="edifice_attention.configs.nemotron_h:NemotronHConfig",
        model="edifice_attention.nemotron_h:NemotronH",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        # Two layers (the contract's limit): a Mamba-2 layer (conv + SSM state) then an attention layer (KV cache);
        # the tests build the three-kind pattern "M-*-".
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "d_in": 12,
            "pattern": "M*",
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_ff": 24,
            "d_state": 8,
            "d_conv": 3,
            "mamba_head_dim": 8,
            "n_groups": 2,
            "chunk_size": 4,
        },
        verification="parity:transformers.NemotronHForCausalLM",
        requires_blocks=("mamba2",),
        interop=("transformers.NemotronHForCausalLM", "transformers.NemotronHModel"),
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)

_CONVERT = "edifice_attention.nemotron_h:from_nemotron_h"

CONVERTERS = (
    Converter(
        "transformers.NemotronHForCausalLM",
        "nemotron_h",
        _CONVERT,
        "Nemotron-H language models (patterns of 'M', '*' and '-'; mixture-of-experts 'E' layers do not convert).",
    ),
    Converter(
        "transformers.NemotronHModel",
        "nemotron_h",
        _CONVERT,
        "Nemotron-H backbones; the LM head is tied to the token embedding.",
    ),
)
