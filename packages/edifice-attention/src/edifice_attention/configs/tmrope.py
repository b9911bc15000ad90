"""Config of ``tmrope``: a decoder with multimodal (temporal, height, width) rotary positions (torch-free).

The model is :mod:`edifice_attention.tmrope`: the decoder_only stack whose RoPE frequencies are split into three
sections rotated by the temporal, height and width position of each token (Qwen2-VL M-RoPE, Qwen2.5-Omni TMRoPE).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Converter, Paper, field
from edifice.spec import TensorSpec
from edifice_attention.configs._decoder_entry import decoder_entry_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["CONVERTERS", "SPECS", "TMRoPEConfig"]

QWEN_OMNI = Paper("Qwen2.5-Omni Technical Report", "Xu et al. (Qwen Team)", 2025, "2503.20215")


@dataclasses.dataclass(kw_only=True)
class TMRoPEConfig(DecoderOnlyConfig):
    """Multimodal RoPE: rotary frequency sections follow a token's temporal, height and width position ids."""

    arch: str = field("tmrope", "Registry name of the architecture this config builds.")
    mrope_section: tuple[int, int, int] | None = field(
        None,
        "Rotary frequency pairs per axis (temporal, height, width), summing to rotary_dim / 2; None splits them "
        "1/4, 3/8, 3/8 as Qwen2-VL's [16, 24, 24] does for 64 pairs.",
    )
    out_bias: bool | None = field(None, "Bias on the output projection; None follows attention_bias (Qwen2: False).")

    aliases: ClassVar[Mapping[str, str]] = {**DecoderOnlyConfig.aliases, "modalities": "mrope_section"}

    def validate(self) -> None:
        """The three sections are positive and cover the rotary dimensions exactly."""
        super().validate()
        if self.positional != "rope":
            self.fail("positional", "must be 'rope' (M-RoPE rotates by 3-D positions)")
        if self.mrope_section is None:
            return
        if len(self.mrope_section) != 3 or any(s <= 0 for s in self.mrope_section):
            self.fail("mrope_section", "must be three positive pair counts (temporal, height, width)")
        pairs = (self.rotary_dim or self.head_size) // 2
        if sum(self.mrope_section) != pairs:
            self.fail("mrope_section", f"must sum to rotary_dim / 2 = {pairs}, got {sum(self.mrope_section)}")

    @property
    def sections(self) -> tuple[int, int, int]:
        """The resolved (temporal, height, width) pair counts."""
        if self.mrope_section is not None:
            return self.mrope_section
        pairs = (self.rotary_dim or self.head_size) // 2
        t = pairs // 4
        w = (pairs - t) // 2
        return (t, pairs - t - w, w)


def _position_ids() -> dict[str, TensorSpec]:
    return {
        "position_ids": TensorSpec(
            ("B", 3, "T"),
            dtype="int64",
            domain="int",
            optional=True,
            doc="(temporal, height, width) rotary position of every token (mrope_position_ids); default: text.",
        ),
    }


SPECS = (
    decoder_entry_spec(
        "tmrope",
        summary="Multimodal RoPE (Qwen2-VL M-RoPE / Qwen2.5-Omni TMRoPE): 3-D (time, height, width) rotary positions.",
        paper=QWEN_OMNI,
        config="edifice_attention.configs.tmrope:TMRoPEConfig",
        model="edifice_attention.tmrope:TMRoPE",
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_ff": 48,
            "vocab_size": 64,
            "mrope_section": (2, 3, 3),
            "attention_bias": True,
        },
        extra_inputs=_position_ids(),
        verification="parity:transformers.Qwen2VLForConditionalGeneration",
        interop=("transformers.Qwen2VLForConditionalGeneration",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.Qwen2VLForConditionalGeneration",
        "tmrope",
        "edifice_attention.tmrope:from_qwen2_vl_text",
        "The language model of Qwen2-VL / Qwen2.5-VL checkpoints (the vision tower is not converted).",
    ),
)
