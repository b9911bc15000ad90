"""Config of ``moba``: Mixture of Block Attention (torch-free); the model is :mod:`edifice_attention.moba`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs._block_select import BlockSelectConfig

__all__ = ["SPECS", "MoBAConfig"]

LU = Paper("MoBA: Mixture of Block Attention for Long-Context LLMs", "Lu et al.", 2025, "2502.13189")


@dataclasses.dataclass(kw_only=True)
class MoBAConfig(BlockSelectConfig):
    """MoBA: each query attends its current block (causally) and the top-k past blocks by ``q . mean(K_block)``."""

    arch: str = field("moba", "Registry name of the architecture this config builds.")
    moba_block_size: int = field(512, "Keys per block (blocks aligned to multiples of it); the paper's 512.")
    moba_top_k: int = field(3, "Blocks each query attends, its current block included (the paper's k = 3).")

    aliases: ClassVar[Mapping[str, str]] = {
        **BlockSelectConfig.aliases,
        "block_size": "moba_block_size",
        "topk": "moba_top_k",
        "moba_chunk_size": "moba_block_size",
        "moba_topk": "moba_top_k",
    }

    def validate(self) -> None:
        """Positive block size and top-k."""
        super().validate()
        self.check_positive("moba_block_size", "moba_top_k")


SPECS = (
    variant_spec(
        "moba",
        "MoBA: causal attention over the current block and the top-k past blocks by a mean-pooled-key gate.",
        LU,
        config="edifice_attention.configs.moba:MoBAConfig",
        model="edifice_attention.moba:MoBA",
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_ff": 32,
            "vocab_size": 32,
            "moba_block_size": 4,
            "moba_top_k": 2,
        },
        verification="oracle:fp64 per-query loop of MoBA's gate (eq. 5-6, causal current block) and block attention",
    ),
)
