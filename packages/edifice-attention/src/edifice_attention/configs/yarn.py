"""Config of ``yarn``: the decoder_only stack with YaRN rotary scaling, its fields made explicit (torch-free).

The model is :mod:`edifice_attention.yarn`. YaRN's frequency ramp and temperature live once, in core's
:class:`edifice.blocks.rope.RotaryEmbedding` (``scaling={"kind": "yarn", ...}``); this entry names their options as
config fields (the catalogue's ``scale``/``original_max_position``) instead of a free-form ``rope_scaling`` dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from edifice import Converter, Paper, field
from edifice_attention.configs._decoder_entry import decoder_entry_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["CONVERTERS", "SPECS", "YarnConfig"]

PENG = Paper("YaRN: Efficient Context Window Extension of Large Language Models", "Peng et al.", 2023, "2309.00071")


@dataclasses.dataclass(kw_only=True)
class YarnConfig(DecoderOnlyConfig):
    """A Llama-style decoder whose RoPE is stretched by YaRN (NTK-by-parts ramp + attention temperature)."""

    arch: str = field("yarn", "Registry name of the architecture this config builds.")
    factor: float = field(4.0, "Context-extension factor s = new length / original_max_position (1 is plain RoPE).")
    original_max_position: int = field(2048, "Training context length L of the RoPE being extended.")
    beta_fast: float = field(32.0, "β (eq. 18-19): dimensions rotating more than β times over L are kept.")
    beta_slow: float = field(1.0, "α (eq. 18-19): dimensions rotating fewer than α times over L are interpolated.")
    attention_factor: float | None = field(
        None, "sqrt(1/t) multiplying cos/sin; None is the paper's 0.1 ln(s) + 1 (eq. 22)."
    )
    truncate: bool = field(True, "Round the ramp ends to whole dimensions, as the authors' code does.")

    aliases: ClassVar[Mapping[str, str]] = {
        **DecoderOnlyConfig.aliases,
        "scale": "factor",
        "original_max_position_embeddings": "original_max_position",
    }

    def validate(self) -> None:
        """A factor >= 1, a positive original length, β > α > 0, and no second rope scaling."""
        super().validate()
        self.check_positive("original_max_position", "beta_slow", "attention_factor")
        if not self.factor >= 1.0:
            self.fail("factor", "must be >= 1 (YaRN extends the context; 1 is plain RoPE)")
        if not self.beta_fast > self.beta_slow:
            self.fail("beta_fast", f"must be > beta_slow={self.beta_slow}")
        if self.positional != "rope":
            self.fail("positional", "must be 'rope' (YaRN scales rotary embeddings)")
        if self.rope_scaling is not None:
            self.fail("rope_scaling", "is set by the yarn fields (factor, original_max_position, beta_fast, ...)")

    def yarn_scaling(self) -> dict[str, Any]:
        """The core :class:`~edifice.blocks.rope.RopeScaling` these fields describe, as a dict."""
        return {
            "kind": "yarn",
            "factor": self.factor,
            "original_max_position_embeddings": self.original_max_position,
            "beta_fast": self.beta_fast,
            "beta_slow": self.beta_slow,
            "attention_factor": self.attention_factor,
            "truncate": self.truncate,
        }


SPECS = (
    decoder_entry_spec(
        "yarn",
        summary="YaRN: RoPE context extension by NTK-by-parts interpolation and an attention temperature.",
        paper=PENG,
        config="edifice_attention.configs.yarn:YarnConfig",
        model="edifice_attention.yarn:Yarn",
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_ff": 48,
            "vocab_size": 64,
            "factor": 4.0,
            "original_max_position": 4,
            "rope_base": 100.0,
        },
        verification="parity:transformers.LlamaForCausalLM",
        interop=("transformers.LlamaForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.LlamaForCausalLM.yarn",
        "yarn",
        "edifice_attention.yarn:from_llama_yarn",
        "Llama-family checkpoints whose rope_parameters/rope_scaling is YaRN (e.g. long-context Llama/Qwen).",
    ),
)
