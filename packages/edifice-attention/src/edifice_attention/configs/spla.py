"""Config of ``spla``: Block Sparse Plus Linear Attention (torch-free); the model is :mod:`edifice_attention.spla`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_attention.configs._linear_attention import MixerStackConfig, linear_attention_spec

__all__ = ["SPECS", "SPLAConfig"]

WANG = Paper("SPLA: Block Sparse Plus Linear Attention for Long Context Modeling", "Wang et al.", 2026, "2601.22379")


@dataclasses.dataclass(kw_only=True)
class SPLAConfig(MixerStackConfig):
    """SPLA (Wang, Friedman, Lei & Wang 2026): exact softmax attention over the local and the selected key blocks
    (selected by a second-order Taylor estimate of each block's attention mass), and residual linear attention over
    the unselected blocks (global minus selected)."""

    arch: str = field("spla", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Number of attention heads.")
    head_dim: int | None = field(None, "Size of each head; None: d_model / n_heads.")
    block_stride: int = field(64, "Keys per block (blocks are aligned to multiples of block_stride).")
    block_window: int = field(1, "Most recent blocks every query attends exactly (its own block included, >= 1).")
    selection_ratio: float = field(0.25, "Share of the older blocks each query selects for exact attention (0..1).")
    rope_theta: float = field(10000.0, "RoPE base.")
    max_len: int = field(2048, "Positions a decoding state holds (the KV cache of the selected blocks).")

    aliases: ClassVar[Mapping[str, str]] = {**MixerStackConfig.aliases, "num_heads": "n_heads", "seq_len": "max_len"}

    def validate(self) -> None:
        """Positive sizes, head_dim even (RoPE), selection_ratio in [0, 1]."""
        super().validate()
        self.check_positive("n_heads", "head_dim", "block_stride", "block_window", "rope_theta", "max_len")
        self.check_range("selection_ratio", 0.0, 1.0)
        if self.head_dim is None and self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model} when head_dim is None")
        if self.resolved_head_dim % 2:
            self.fail("head_dim", f"must be even (RoPE), got {self.resolved_head_dim}")

    @property
    def resolved_head_dim(self) -> int:
        """``head_dim``, or ``d_model / n_heads``."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads


SPECS = (
    linear_attention_spec(
        "spla",
        "edifice_attention.configs.spla:SPLAConfig",
        "edifice_attention.spla:SPLA",
        "SPLA: exact attention on local + Taylor-selected key blocks, residual linear attention on the rest.",
        WANG,
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "n_heads": 2,
            "d_in": 12,
            "d_ff": 24,
            "block_stride": 2,
            "selection_ratio": 0.5,
            "max_len": 32,
        },
        verification="oracle:fp64 per-query loop of block selection + exact attention + residual linear attention",
    ),
)
