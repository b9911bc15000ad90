"""Config of ``gqa``: a causal transformer with grouped-query attention (Ainslie et al. 2023) (torch-free).

Shares :class:`~edifice_attention.configs.decoder_only.DecoderOnlyConfig`'s fields and the model class; the default
groups 4 query heads over 2 key/value heads. ``n_kv_heads=1`` is multi-query attention, ``n_kv_heads=n_heads`` MHA.
"""

from __future__ import annotations

import dataclasses

from edifice import field
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["GQAConfig"]


@dataclasses.dataclass(kw_only=True)
class GQAConfig(DecoderOnlyConfig):
    """Grouped-query attention: ``n_heads`` query heads share ``n_kv_heads`` key/value heads in groups."""

    arch: str = field("gqa", "Registry name of the architecture this config builds.")
    n_kv_heads: int | None = field(2, "Number of key/value heads (divides n_heads); 1 is MQA, n_heads is MHA.")
