"""Config of ``rwkv``: RWKV-7 "Goose" (torch-free); the model is :mod:`edifice_attention.rwkv`."""

from __future__ import annotations

import dataclasses
import math

from edifice import ArchSpec, Converter, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["CONVERTERS", "SPECS", "RWKV7Config", "low_rank_default"]

PENG = Paper('RWKV-7 "Goose" with Expressive Dynamic State Evolution', "Peng et al.", 2025, "2503.14456")


def low_rank_default(d_model: int, factor: float) -> int:
    """The authors' LoRA width rule, ``max(32, round(factor·sqrt(d_model) / 32)·32)`` (RWKV-v7 train_temp model.py)."""
    return max(32, round(factor * math.sqrt(d_model) / 32) * 32)


@dataclasses.dataclass(kw_only=True)
class RWKV7Config(SequenceConfig):
    """RWKV-7 (Peng et al. 2025): time-mix with the generalized delta rule, squared-ReLU channel-mix, LayerNorm."""

    arch: str = field("rwkv", "Registry name of the architecture this config builds.")
    head_dim: int = field(64, "Key/value size of each head (the authors' head size 64); n_heads = d_model / head_dim.")
    decay_low_rank_dim: int | None = field(None, "Rank of the decay LoRA; None: max(32, round(2.5 sqrt(d)/32)*32).")
    a_low_rank_dim: int | None = field(None, "Rank of the in-context learning-rate LoRA; None: as the decay's.")
    v_low_rank_dim: int | None = field(
        None, "Rank of the value-residual LoRA; None: max(32, round(1.7 sqrt(d)/32)*32)."
    )
    gate_low_rank_dim: int | None = field(None, "Rank of the output-gate LoRA; None: max(32, round(5 sqrt(d)/32)*32).")
    d_ff: int | None = field(None, "Hidden size of the channel-mix; None: 4 * d_model (the authors').")
    norm_eps: float = field(1e-5, "Epsilon of the LayerNorms.")
    group_norm_eps: float | None = field(None, "Epsilon of the per-head GroupNorm; None: head_dim * 1e-5 (64e-5).")
    chunk_size: int = field(64, "Steps per chunk of the chunked (training) form of the generalized delta rule.")

    def validate(self) -> None:
        """Heads must split d_model; ranks, widths and epsilons positive."""
        super().validate()
        self.check_positive("head_dim", "norm_eps", "chunk_size")
        self.check_positive(
            "decay_low_rank_dim", "a_low_rank_dim", "v_low_rank_dim", "gate_low_rank_dim", "d_ff", "group_norm_eps"
        )
        if self.d_model % self.head_dim:
            self.fail(
                "head_dim", f"must divide d_model={self.d_model} (n_heads = d_model / head_dim), got {self.head_dim}"
            )

    @property
    def n_heads(self) -> int:
        """Number of heads, ``d_model / head_dim``."""
        return self.d_model // self.head_dim

    @property
    def ranks(self) -> dict[str, int]:
        """Resolved LoRA ranks of the decay ``w``, learning rate ``a``, value residual ``v`` and gate ``g``."""
        d = self.d_model
        return {
            "w": self.decay_low_rank_dim or low_rank_default(d, 2.5),
            "a": self.a_low_rank_dim or low_rank_default(d, 2.5),
            "v": self.v_low_rank_dim or low_rank_default(d, 1.7),
            "g": self.gate_low_rank_dim or low_rank_default(d, 5.0),
        }

    @property
    def ffn_hidden(self) -> int:
        """The resolved channel-mix hidden size."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def group_eps(self) -> float:
        """The resolved GroupNorm epsilon."""
        return self.group_norm_eps if self.group_norm_eps is not None else self.head_dim * 1e-5


SPECS = (
    ArchSpec(
        name="rwkv",
        family="attention",
        distribution="edifice-attention",
        summary='RWKV-7 "Goose": token-shift time-mix with the generalized delta rule (vector decay, in-context '
        "learning rate), value residual, squared-ReLU channel-mix.",
        paper=PENG,
        config="edifice_attention.configs.rwkv:RWKV7Config",
        model="edifice_attention.rwkv:RWKV7",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        causal=True,
        stateful=True,
        variable_length=True,
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "head_dim": 16,
            "decay_low_rank_dim": 8,
            "a_low_rank_dim": 8,
            "v_low_rank_dim": 8,
            "gate_low_rank_dim": 8,
            "d_ff": 64,
            "d_in": 12,
            "chunk_size": 4,
        },
        verification="parity:fla.models.RWKV7ForCausalLM",
        interop=("fla.models.RWKV7ForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "fla.models.RWKV7ForCausalLM",
        "rwkv",
        "edifice_attention.rwkv:from_fla",
        "flash-linear-attention RWKV-7 checkpoints (RWKV7ForCausalLM): input_ids -> logits.",
    ),
)
