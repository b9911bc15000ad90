"""Config of ``nystromformer``: Nyström-approximated self-attention (torch-free); model in ``nystromformer.py``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_attention.configs._encoder import EncoderConfig, encoder_spec

__all__ = ["CONVERTERS", "SPECS", "NystromformerConfig"]

XIONG = Paper(
    "Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention", "Xiong et al.", 2021, "2102.03902"
)


@dataclasses.dataclass(kw_only=True)
class NystromformerConfig(EncoderConfig):
    """Nyströmformer (Xiong et al. 2021): post-norm encoder blocks of Nyström attention and a GELU MLP."""

    arch: str = field("nystromformer", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Number of attention heads (d_model must divide by it).")
    num_landmarks: int = field(64, "Landmarks m (segment means of queries/keys, eq. 12); T <= m is exact softmax.")
    pinv_iters: int = field(6, "Iterations of the Moore-Penrose pseudo-inverse (eq. 16; the paper: 6).")
    conv_kernel_size: int | None = field(
        65, "Odd length of the depthwise convolution of the values added to the output (per head); None: no skip."
    )
    activation: str = field("gelu_tanh", "MLP activation (transformers' NystromformerConfig: 'gelu_new', tanh GELU).")

    aliases: ClassVar[Mapping[str, str]] = {**EncoderConfig.aliases, "num_attention_heads": "n_heads"}

    def validate(self) -> None:
        """Heads divide the width; landmarks, iterations and an odd kernel are positive."""
        super().validate()
        self.check_positive("n_heads", "num_landmarks", "conv_kernel_size")
        self.check_positive("pinv_iters", allow_zero=True)
        self.check_divides("n_heads", "d_model")
        if self.conv_kernel_size is not None and self.conv_kernel_size % 2 == 0:
            self.fail("conv_kernel_size", "must be odd (the convolution is centred and keeps the length) or None")


SPECS = (
    encoder_spec(
        "nystromformer",
        "edifice_attention.configs.nystromformer:NystromformerConfig",
        "edifice_attention.nystromformer:Nystromformer",
        "Nyströmformer: softmax attention through segment-means landmarks and an iterative pseudo-inverse; non-causal.",
        XIONG,
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "n_heads": 2,
            "d_ff": 32,
            "d_in": 6,
            "max_len": 32,
            "num_landmarks": 4,
            "conv_kernel_size": 3,
        },
        verification="parity:transformers.NystromformerModel",
        interop=("transformers.NystromformerModel",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.NystromformerModel",
        "nystromformer",
        "edifice_attention.nystromformer:from_nystromformer",
        "transformers Nyströmformer checkpoints (model or task model): input_ids -> logits via the tied embedding.",
    ),
)
