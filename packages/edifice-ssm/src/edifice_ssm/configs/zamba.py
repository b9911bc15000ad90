"""Config and spec of ``zamba``: a Mamba backbone with one shared attention + MLP block every few layers (torch-free).

Layer ``i`` applies the shared block before its Mamba block when ``i`` is in ``hybrid_layers`` (default: every
layer with ``i % attn_layer_period == attn_layer_offset``, i.e. once every ``attn_layer_period`` Mamba blocks as in
the paper's 7B model, which uses 6). The shared block reads the concatenation of the residual stream and the input
embeddings, so its attention is ``2 * d_model`` wide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Converter, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.mamba import MambaConfig

__all__ = ["CONVERTERS", "SPECS", "ZambaConfig"]

#: Activations of the shared block's gated MLP (names of ``edifice.blocks.activations``).
_ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")


@dataclasses.dataclass(kw_only=True)
class ZambaConfig(MambaConfig):
    """Zamba: Mamba blocks; every few layers one globally shared attention + MLP block on [h, embeddings]."""

    arch: str = field("zamba", "Registry name of the architecture this config builds.")
    n_layers: int = field(12, "Number of Mamba blocks.")
    n_mamba_heads: int = field(1, "Heads of each Mamba mixer, each with its own x_proj/dt_proj (released Zamba: 2).")
    n_heads: int = field(4, "Attention heads of the shared block.")
    n_kv_heads: int | None = field(None, "Key/value heads of the shared attention; None means n_heads.")
    head_dim: int | None = field(None, "Shared attention head size; None means 2 * d_model // n_heads.")
    attn_layer_period: int = field(6, "Apply the shared block once every this many layers.")
    attn_layer_offset: int = field(5, "Index within each period of the layer that applies the shared block.")
    hybrid_layers: tuple[int, ...] | None = field(
        None, "Explicit indices of the layers that apply the shared block; None derives them from the period."
    )
    d_ff: int | None = field(None, "Hidden width of the shared block's gated MLP; None means 4 * d_model.")
    activation: str = field("gelu", "Activation of the shared block's gated MLP (GeGLU with 'gelu').")

    aliases: ClassVar[Mapping[str, str]] = {
        **MambaConfig.aliases,
        "attention_every": "attn_layer_period",
        "intermediate_size": "d_ff",
        "attention_head_dim": "head_dim",
    }

    def validate(self) -> None:
        """Check the heads, the schedule and the hybrid layer indices."""
        super().validate()
        self.check_positive("n_mamba_heads", "n_heads", "n_kv_heads", "head_dim", "attn_layer_period", "d_ff")
        self.check_positive("attn_layer_offset", allow_zero=True)
        self.check_choice("activation", _ACTIVATIONS)
        if self.attn_layer_offset >= self.attn_layer_period:
            self.fail("attn_layer_offset", f"must be < attn_layer_period={self.attn_layer_period}")
        if self.d_inner % self.n_mamba_heads:
            self.fail("n_mamba_heads", f"must divide the Mamba width expand * d_model = {self.d_inner}")
        self.check_divides("n_kv_heads", "n_heads")
        if self.head_dim is None and (2 * self.d_model) % self.n_heads:
            self.fail("n_heads", f"must divide 2 * d_model = {2 * self.d_model}, or set head_dim")
        if self.hybrid_layers is not None:
            bad = [i for i in self.hybrid_layers if not 0 <= i < self.n_layers]
            if bad or len(set(self.hybrid_layers)) != len(self.hybrid_layers):
                self.fail("hybrid_layers", f"must be distinct layer indices in [0, n_layers={self.n_layers})")

    def is_hybrid(self, index: int) -> bool:
        """Whether layer ``index`` applies the shared attention block before its Mamba block."""
        if self.hybrid_layers is not None:
            return index in self.hybrid_layers
        return index % self.attn_layer_period == self.attn_layer_offset

    @property
    def attn_head_dim(self) -> int:
        """The resolved shared-attention head size (``head_dim`` or ``2 * d_model // n_heads``)."""
        return self.head_dim if self.head_dim is not None else 2 * self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """The resolved MLP width (``d_ff`` or ``4 * d_model``)."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model


GLORIOSO = Paper(
    "Zamba: A Compact 7B SSM Hybrid Model",
    "Glorioso, Anthony, Tokpanov, Whittington, Pilault, Ibrahim, Millidge",
    2024,
    "2405.16712",
)

SPECS = (
    ArchSpec(
        name="zamba",
        family="ssm",
        distribution="edifice-ssm",
        summary="Zamba: a Mamba backbone with one globally shared attention + MLP block reading [h, embeddings].",
        paper=GLORIOSO,
        config="edifice_ssm.configs.zamba:ZambaConfig",
        model="edifice_ssm.zamba:Zamba",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "d_in": 6,
            "d_state": 4,
            "d_conv": 3,
            "n_mamba_heads": 2,
            "n_heads": 2,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "d_ff": 24,
        },
        verification="parity:transformers.ZambaForCausalLM",
        interop=("transformers.ZambaModel", "transformers.ZambaForCausalLM"),
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)

CONVERTERS = (
    Converter(
        "transformers.ZambaForCausalLM",
        "zamba",
        "edifice_ssm.convert_zamba:from_zamba",
        "transformers ZambaForCausalLM (with its LM head) onto zamba; the tied shared block is stored once.",
    ),
    Converter(
        "transformers.ZambaModel",
        "zamba",
        "edifice_ssm.convert_zamba:from_zamba",
        "transformers ZambaModel weights onto zamba (the LM head is tied to the embedding).",
    ),
)
