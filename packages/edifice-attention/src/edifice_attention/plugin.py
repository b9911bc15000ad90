"""Entry point of edifice-attention: registers its architectures and converters (imports nothing heavy)."""

from __future__ import annotations

from collections.abc import Callable

from edifice import ArchSpec, Converter, Paper, hookimpl
from edifice.plugins import collect_specs
from edifice.sequence import sequence_inputs, sequence_outputs

_DIST = "edifice-attention"
_MODEL = "edifice_attention.decoder_only:DecoderOnly"

VASWANI = Paper("Attention Is All You Need", "Vaswani et al.", 2017, "1706.03762")
AINSLIE = Paper(
    "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints",
    "Ainslie et al.",
    2023,
    "2305.13245",
)
TOUVRON = Paper("LLaMA: Open and Efficient Foundation Language Models", "Touvron et al.", 2023, "2302.13971")

# Shared by the three entries: one causal, stateful transformer class that handles padding masks.
_COMMON = {
    "distribution": _DIST,
    "model": _MODEL,
    "inputs": sequence_inputs(),
    "outputs": sequence_outputs(aux_loss_when="n_experts > 0"),
    "causal": True,
    "stateful": True,
    "variable_length": True,
}


def specs() -> list[ArchSpec]:
    """The architecture specs of this distribution."""
    return [
        ArchSpec(
            name="decoder_only",
            family="transformer",
            summary="Llama-style causal decoder: GQA, RoPE (NTK/YaRN scaling), SwiGLU, RMSNorm pre-norm, optional MoE.",
            paper=TOUVRON,
            config="edifice_attention.configs.decoder_only:DecoderOnlyConfig",
            tiny={"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "vocab_size": 64},
            verification="parity:transformers.LlamaForCausalLM",
            interop=(
                "transformers.LlamaForCausalLM",
                "transformers.MistralForCausalLM",
                "transformers.MixtralForCausalLM",
            ),
            **_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            name="attention",
            family="attention",
            summary="Vaswani multi-head self-attention as a causal sequence model, with an optional sliding window.",
            paper=VASWANI,
            config="edifice_attention.configs.attention:AttentionConfig",
            tiny={"d_model": 32, "n_layers": 2, "n_heads": 4, "d_in": 12, "window": 4},
            defaults={"n_kv_heads": None},
            fixed=("n_kv_heads",),
            verification="parity:torch.nn.TransformerEncoderLayer",
            alias_of="decoder_only",
            interop=("transformers.MistralForCausalLM",),
            **_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            name="gqa",
            family="attention",
            summary="Grouped-query attention: query heads share fewer key/value heads (MQA to MHA).",
            paper=AINSLIE,
            config="edifice_attention.configs.gqa:GQAConfig",
            tiny={"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64},
            verification="parity:transformers.LlamaForCausalLM",
            alias_of="decoder_only",
            interop=("transformers.LlamaForCausalLM",),
            **_COMMON,  # type: ignore[arg-type]
        ),
    ]


_CONVERT = "edifice_attention.convert"
_CONFIGS = "edifice_attention.configs"


def converters() -> list[Converter]:
    """Checkpoint converters from transformers' Llama-family classes."""
    return [
        Converter(
            "transformers.LlamaForCausalLM", "decoder_only", f"{_CONVERT}:from_llama", "Llama 1/2/3 checkpoints."
        ),
        Converter(
            "transformers.MistralForCausalLM", "decoder_only", f"{_CONVERT}:from_mistral", "Mistral (sliding window)."
        ),
        Converter("transformers.MixtralForCausalLM", "decoder_only", f"{_CONVERT}:from_mixtral", "Mixtral (MoE FFN)."),
    ]


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    """Register the attention and transformer architectures (and the ``SPECS`` each ``configs/<arch>.py`` lists)."""
    for spec in [*specs(), *collect_specs(_CONFIGS)]:
        register(spec)


@hookimpl
def register_converters(register: Callable[..., None]) -> None:
    """Register the checkpoint converters (and the ``CONVERTERS`` each ``configs/<arch>.py`` lists)."""
    for converter in [*converters(), *collect_specs(_CONFIGS, "CONVERTERS")]:
        register(converter)
