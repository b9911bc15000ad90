"""Config of ``infllm_v2``: MiniCPM4's dense-sparse switchable attention (torch-free); model in
:mod:`edifice_attention.infllm_v2`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs._block_select import BlockSelectConfig

__all__ = ["SPECS", "InfLLMV2Config"]

MINICPM4 = Paper("MiniCPM4: Ultra-Efficient LLMs on End Devices", "MiniCPM Team", 2025, "2506.07900")


@dataclasses.dataclass(kw_only=True)
class InfLLMV2Config(BlockSelectConfig):
    """InfLLM-V2: dense attention for short contexts; beyond ``dense_len`` keys, attention over the initial, local and
    top-k key blocks scored by fine-grained semantic kernels, shared across a GQA group. Defaults: MiniCPM4-8B."""

    arch: str = field("infllm_v2", "Registry name of the architecture this config builds.")
    sparse_block_size: int = field(64, "Keys per selection block (MiniCPM4: 64).")
    kernel_size: int = field(32, "Keys per semantic kernel, mean-pooled (MiniCPM4: 32).")
    kernel_stride: int = field(16, "Positions between consecutive semantic kernels (MiniCPM4: 16).")
    sparse_top_k: int = field(
        64, "Blocks each query attends in sparse mode, initial and local included (MiniCPM4: 64)."
    )
    init_blocks: int = field(1, "Initial blocks always attended (MiniCPM4: 1).")
    local_blocks: int = field(32, "Most recent blocks always attended, the query's own included (2048 / 64 tokens).")
    dense_len: int = field(8192, "A query seeing at most this many keys attends all of them (MiniCPM4: 8192).")

    aliases: ClassVar[Mapping[str, str]] = {
        **BlockSelectConfig.aliases,
        "block_size": "sparse_block_size",
        "num_topk_blocks": "sparse_top_k",
        "topk": "sparse_top_k",
        "num_initial_blocks": "init_blocks",
        "num_local_blocks": "local_blocks",
    }

    def validate(self) -> None:
        """Positive sizes; ``init_blocks`` may be 0."""
        super().validate()
        self.check_positive("sparse_block_size", "kernel_size", "kernel_stride", "sparse_top_k", "local_blocks")
        self.check_positive("dense_len")
        if self.init_blocks < 0:
            self.fail("init_blocks", f"must be >= 0, got {self.init_blocks}")


SPECS = (
    variant_spec(
        "infllm_v2",
        "InfLLM-V2 (MiniCPM4): dense-sparse switchable attention over kernel-scored, GQA-shared key blocks.",
        MINICPM4,
        config="edifice_attention.configs.infllm_v2:InfLLMV2Config",
        model="edifice_attention.infllm_v2:InfLLMV2",
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_ff": 32,
            "vocab_size": 32,
            "sparse_block_size": 4,
            "kernel_size": 2,
            "kernel_stride": 1,
            "sparse_top_k": 2,
            "local_blocks": 1,
            "dense_len": 4,
        },
        verification="oracle:fp64 per-query loop of kernel scoring, group-shared top-k, forced blocks and dense switch",
    ),
)
