"""Config of ``conformer``: macaron Conformer encoder blocks over features (torch-free); model in ``conformer.py``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Converter, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_attention.configs._linear_attention import MixerStackConfig

__all__ = ["CONVERTERS", "POSITION_KINDS", "SPECS", "ConformerConfig"]

GULATI = Paper(
    "Conformer: Convolution-augmented Transformer for Speech Recognition", "Gulati et al.", 2020, "2005.08100"
)

#: Position information inside self-attention: transformers' rotary form, or none.
POSITION_KINDS = ("rotary", "none")


@dataclasses.dataclass(kw_only=True)
class ConformerConfig(MixerStackConfig):
    """Conformer (Gulati et al. 2020): ½ FFN, self-attention, convolution module, ½ FFN, LayerNorm per block."""

    arch: str = field("conformer", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Number of self-attention heads (d_model must divide by it).")
    conv_kernel_size: int = field(31, "Odd kernel of the depthwise convolution of the convolution module (paper: 32).")
    norm: str = field("layernorm", "Norm of every sub-block and of the block end: 'layernorm' (paper) or 'rmsnorm'.")
    norm_eps: float = field(1e-5, "Epsilon of every LayerNorm (transformers' Wav2Vec2-Conformer: 1e-5).")
    ffn: str = field("mlp", "Feed-forward kind of both half-step FFNs: 'mlp' (paper: Swish MLP) or a gated kind.")
    activation: str = field("silu", "Activation of the FFNs and of the convolution module (paper: Swish = SiLU).")
    position_embeddings: str = field(
        "rotary", "Positions in self-attention: 'rotary' (transformers' Wav2Vec2-Conformer form) or 'none'."
    )
    rope_base: float = field(10000.0, "Base of the rotary frequencies.")
    batch_norm_momentum: float = field(0.1, "Momentum of the convolution module's BatchNorm running statistics.")
    batch_norm_eps: float = field(1e-5, "Epsilon of the convolution module's BatchNorm.")

    aliases: ClassVar[Mapping[str, str]] = {
        **MixerStackConfig.aliases,
        "num_attention_heads": "n_heads",
        "conv_depthwise_kernel_size": "conv_kernel_size",
        "hidden_act": "activation",
        "layer_norm_eps": "norm_eps",
        "rotary_embedding_base": "rope_base",
    }

    def validate(self) -> None:
        """Heads divide the width; the depthwise kernel is odd; the choices are known."""
        super().validate()
        self.check_positive("n_heads", "conv_kernel_size", "rope_base", "batch_norm_eps")
        self.check_range("batch_norm_momentum", 0.0, 1.0)
        self.check_divides("n_heads", "d_model")
        self.check_activation("activation")
        self.check_choice("position_embeddings", POSITION_KINDS)
        if self.conv_kernel_size % 2 == 0:
            self.fail("conv_kernel_size", "must be odd (the convolution is centred and keeps the length)")
        if self.position_embeddings == "rotary" and (self.d_model // self.n_heads) % 2:
            self.fail("position_embeddings", "'rotary' needs an even head size d_model / n_heads")

    def default_d_ff(self) -> int:
        """The paper's expansion factor 4 (for every FFN kind)."""
        return 4 * self.d_model


SPECS = (
    ArchSpec(
        name="conformer",
        family="attention",
        distribution="edifice-attention",
        summary="Conformer: macaron FFN halves around self-attention and a GLU/depthwise-conv/BatchNorm module.",
        paper=GULATI,
        config="edifice_attention.configs.conformer:ConformerConfig",
        model="edifice_attention.conformer:Conformer",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        causal=False,
        stateful=False,
        variable_length=False,
        reasons={
            "causal": "bidirectional encoder: attention and the centred depthwise convolution read both directions",
            "stateful": "bidirectional encoder: there is no left-to-right decoding state",
            "variable_length": "as in transformers, padded frames enter the depthwise convolution: valid outputs "
            "depend on the padding (attention_mask only zeroes the input frames and hides padded keys)",
        },
        tiny={"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32, "d_in": 6, "conv_kernel_size": 3},
        verification="parity:transformers.Wav2Vec2ConformerModel",
        interop=("transformers.Wav2Vec2ConformerModel",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.Wav2Vec2ConformerModel",
        "conformer",
        "edifice_attention.conformer:from_wav2vec2_conformer",
        "transformers Wav2Vec2-Conformer encoders (rotary or no positions): encoder input features -> hidden states.",
    ),
)
