"""Config of ``fnet``: FNet, token mixing by a 2-D Fourier transform (torch-free); model in ``fnet.py``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice_attention.configs._encoder import EncoderConfig, encoder_spec

__all__ = ["CONVERTERS", "SPECS", "FNetConfig"]

LEE_THORP = Paper(
    "FNet: Mixing Tokens with Fourier Transforms", "Lee-Thorp, Ainslie, Eckstein & Ontanon", 2022, "2105.03824"
)


@dataclasses.dataclass(kw_only=True)
class FNetConfig(EncoderConfig):
    """FNet (Lee-Thorp et al. 2022): post-norm encoder blocks whose mixer is ``Re(FFT_seq(FFT_hidden(x)))``."""

    arch: str = field("fnet", "Registry name of the architecture this config builds.")
    activation: str = field("gelu_tanh", "MLP activation (the released FNet: tanh GELU, transformers' 'gelu_new').")
    embed_projection: bool = field(True, "A dense layer after the embedding LayerNorm, as the released FNet has.")

    aliases: ClassVar[Mapping[str, str]] = {**EncoderConfig.aliases}


SPECS = (
    encoder_spec(
        "fnet",
        "edifice_attention.configs.fnet:FNetConfig",
        "edifice_attention.fnet:FNet",
        "FNet: a parameter-free token mixer, the real part of a 2-D FFT over sequence and hidden axes; non-causal.",
        LEE_THORP,
        tiny={"d_model": 16, "n_layers": 2, "d_ff": 32, "d_in": 6, "max_len": 32},
        verification="parity:transformers.FNetModel",
        interop=("transformers.FNetModel",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.FNetModel",
        "fnet",
        "edifice_attention.fnet:from_fnet",
        "transformers FNet checkpoints (FNetModel or a task model): input_ids -> last hidden state.",
    ),
)
