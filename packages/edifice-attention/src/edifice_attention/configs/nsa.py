"""Config of ``nsa``: DeepSeek's Native Sparse Attention (torch-free); the model is :mod:`edifice_attention.nsa`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs._block_select import BlockSelectConfig

__all__ = ["SPECS", "NSAConfig"]

YUAN = Paper(
    "Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse Attention",
    "Yuan et al.",
    2025,
    "2502.11089",
)


@dataclasses.dataclass(kw_only=True)
class NSAConfig(BlockSelectConfig):
    """NSA: compressed-token, selected-block and sliding-window attention mixed by per-head sigmoid gates (eq. 5).
    Defaults: the paper's §4.1 (l = 32, d = 16, l' = 64, n = 16 with 1 initial and 2 local blocks, w = 512)."""

    arch: str = field("nsa", "Registry name of the architecture this config builds.")
    cmp_size: int = field(32, "Keys per compression block l (the paper's 32).")
    cmp_stride: int = field(16, "Sliding stride d between compression blocks (the paper's 16; at most cmp_size).")
    select_block: int = field(64, "Keys per selection block l' (the paper's 64).")
    select_top_n: int = field(16, "Selected blocks per query n, initial and local included (the paper's 16).")
    init_blocks: int = field(1, "Initial selection blocks always kept (the paper's 1).")
    local_blocks: int = field(2, "Most recent selection blocks always kept, the query's own included (the paper's 2).")
    nsa_window: int = field(512, "Sliding-window branch size w in keys (the paper's 512).")

    aliases: ClassVar[Mapping[str, str]] = {
        **BlockSelectConfig.aliases,
        "block_size": "select_block",
        "num_selected_blocks": "select_top_n",
        "block_counts": "select_top_n",
        "window_size": "nsa_window",
    }

    def validate(self) -> None:
        """Positive sizes, ``cmp_stride <= cmp_size``, ``init_blocks >= 0``."""
        super().validate()
        self.check_positive("cmp_size", "cmp_stride", "select_block", "select_top_n", "local_blocks", "nsa_window")
        if self.cmp_stride > self.cmp_size:
            self.fail("cmp_stride", f"must be at most cmp_size={self.cmp_size} (no key left out of compression)")
        if self.init_blocks < 0:
            self.fail("init_blocks", f"must be >= 0, got {self.init_blocks}")


SPECS = (
    variant_spec(
        "nsa",
        "Native Sparse Attention: gated compressed, top-n selected-block and sliding-window attention branches.",
        YUAN,
        config="edifice_attention.configs.nsa:NSAConfig",
        model="edifice_attention.nsa:NSA",
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_ff": 32,
            "vocab_size": 32,
            "cmp_size": 2,
            "cmp_stride": 2,
            "select_block": 4,
            "select_top_n": 2,
            "local_blocks": 1,
            "nsa_window": 3,
        },
        verification="oracle:fp64 per-query loop of NSA eq. 5-12 (compression MLP, group-summed top-n, window, gates)",
    ),
)
