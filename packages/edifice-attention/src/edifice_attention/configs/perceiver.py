"""Config of ``perceiver``: Perceiver / Perceiver IO, latents reading the input by cross-attention (torch-free)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Converter, Paper, TensorSpec, field
from edifice.config import ArchConfig

__all__ = ["CONVERTERS", "SPECS", "PerceiverConfig"]

JAEGLE = Paper(
    "Perceiver IO: A General Architecture for Structured Inputs & Outputs", "Jaegle et al.", 2022, "2107.14795"
)


@dataclasses.dataclass(kw_only=True)
class PerceiverConfig(ArchConfig):
    """Perceiver (IO): N latents cross-attend to x [B, T, d_in]; latent self-attention; optional query decoder."""

    arch: str = field("perceiver", "Registry name of the architecture this config builds.")
    d_in: int = field(64, "Feature size of the input array x [B, T, d_in] (the cross-attention's keys and values).")
    d_model: int = field(256, "Latent width (transformers' d_latents).")
    num_latents: int = field(256, "Number of latent vectors N (the learned latent array, §2 of Perceiver IO).")
    n_layers: int = field(2, "Self-attention layers per block (num_self_attends_per_block).")
    num_blocks: int = field(1, "Repeats of the block of self-attention layers, with shared weights (Perceiver §2).")
    n_heads: int = field(8, "Heads of the latent self-attention.")
    n_cross_heads: int = field(1, "Heads of the encoder's (and decoder's) cross-attention.")
    qk_channels: int | None = field(
        None,
        "Query/key (= value) width of every attention; None: the cross-attention's d_in, the self-attention's d_model.",
    )
    self_widening: int = field(1, "Hidden size of the latent MLPs is d_model * self_widening.")
    cross_widening: int = field(1, "Hidden size of the cross-attention MLP is d_model * cross_widening.")
    query_residual: bool = field(True, "Add the latents back after the encoder's cross-attention.")
    activation: str = field("gelu", "Activation of the MLPs.")
    norm_eps: float = field(1e-5, "Epsilon of every LayerNorm.")
    num_outputs: int | None = field(
        None,
        "Perceiver IO decoder: this many learned output queries cross-attend to the latents; None: return latents.",
    )
    d_out: int | None = field(None, "With num_outputs: width of each output (a final linear layer); None: d_model.")
    dropout: float = field(0.0, "Dropout probability on the attention and MLP outputs.")

    aliases: ClassVar[Mapping[str, str]] = {
        "input_dim": "d_in",
        "latent_dim": "d_model",
        "d_latents": "d_model",
        "num_layers": "n_layers",
        "num_heads": "n_heads",
        "num_cross_heads": "n_cross_heads",
        "num_self_attends_per_block": "n_layers",
        "embed_dim": "d_model",
    }

    def validate(self) -> None:
        """Positive sizes; every attention's width splits over its heads."""
        super().validate()
        self.check_positive("d_in", "d_model", "num_latents", "n_layers", "num_blocks", "n_heads", "n_cross_heads")
        self.check_positive("qk_channels", "self_widening", "cross_widening", "norm_eps", "num_outputs", "d_out")
        self.check_activation("activation")
        self.check_range("dropout", 0.0, 1.0)
        if self.dropout == 1.0:
            self.fail("dropout", "must be < 1")
        for name, width, heads in (
            ("n_cross_heads", self.qk_channels or self.d_in, self.n_cross_heads),
            ("n_heads", self.qk_channels or self.d_model, self.n_heads),
        ):
            if width % heads:
                self.fail(name, f"={heads} must divide the attention width {width} (qk_channels, else d_in/d_model)")


_OUT = "num_outputs if num_outputs is not None else num_latents"
_D_OUT = "(d_out if d_out is not None else d_model) if num_outputs is not None else d_model"

SPECS = (
    ArchSpec(
        name="perceiver",
        family="attention",
        distribution="edifice-attention",
        summary="Perceiver / Perceiver IO: a latent array cross-attends to the input, a latent self-attention tower, "
        "optional output-query decoder; cost linear in the input length.",
        paper=JAEGLE,
        config="edifice_attention.configs.perceiver:PerceiverConfig",
        model="edifice_attention.perceiver:Perceiver",
        inputs={
            "x": TensorSpec(("B", "T", "d_in"), doc="Input array (already embedded/position-encoded)."),
            "attention_mask": TensorSpec(
                ("B", "T"), dtype="bool", domain="bool", optional=True, doc="Padding mask: True marks a valid position."
            ),
        },
        outputs={"hidden": TensorSpec(("B", _OUT, _D_OUT), doc="Latents, or the decoder's outputs with num_outputs.")},
        tiny={
            "d_in": 6,
            "d_model": 16,
            "num_latents": 4,
            "n_layers": 1,
            "n_heads": 2,
            "n_cross_heads": 2,
            "num_outputs": 3,
        },
        verification="parity:transformers.PerceiverModel",
        interop=("transformers.PerceiverModel",),
        causal=False,
        stateful=False,
        variable_length=True,
        reasons={
            "causal": "every latent reads the whole input (Perceiver AR's causal form is a different entry)",
            "stateful": "no left-to-right decoding: the latents summarise the whole input",
        },
    ),
)

CONVERTERS = (
    Converter(
        "transformers.PerceiverModel",
        "perceiver",
        "edifice_attention.perceiver:from_perceiver",
        "transformers PerceiverModel without pre/post-processors (inputs are the array x): x -> latents "
        "(or a PerceiverBasicDecoder with trainable queries: x -> outputs).",
    ),
)
