"""Config of ``mta``: Multi-Token Attention (Golovneva et al. 2025) in the ``decoder_only`` stack (torch-free)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "MtaConfig"]

GOLOVNEVA = Paper("Multi-Token Attention", "Golovneva et al.", 2025, "2504.00927")


@dataclasses.dataclass(kw_only=True)
class MtaConfig(DecoderOnlyConfig):
    """Causal attention whose scores are convolved over queries and keys (pre-softmax) and mixed across heads."""

    arch: str = field("mta", "Registry name of the architecture this config builds.")
    c_q: int = field(6, "Query extent of the key-query convolution (causal: the last c_q queries; paper: 6).")
    c_k: int = field(11, "Key extent of the key-query convolution (centred over keys; paper: 11).")
    c_h: int = field(2, "Heads per head-mixing group (post-softmax; n_heads must divide by it; paper: 2).")
    kq_conv_every: int = field(4, "Key-query convolution in layers l = every, 2·every, … (1-based; paper: every 4th).")
    head_conv_every: int = field(1, "Head-mixing convolution in layers l = every, 2·every, … (1-based; paper: all).")
    head_norm_eps: float = field(1e-5, "Epsilon of the per-head RMSNorm (group norm) on each head's output.")
    kernel_init: str = field("identity", "Initial kernels: 'identity' (starts as softmax attention) or 'normal'.")

    aliases: ClassVar[Mapping[str, str]] = {**DecoderOnlyConfig.aliases}

    def validate(self) -> None:
        """Positive kernel sizes and intervals; head groups divide the heads; no ring-buffer window."""
        super().validate()
        self.check_positive("c_q", "c_k", "c_h", "kq_conv_every", "head_conv_every", "head_norm_eps")
        self.check_divides("c_h", "n_heads")
        self.check_choice("kernel_init", ("identity", "normal"))
        if self.window is not None:
            self.fail("window", "must be None: the key convolution runs over cache slots in position order")
        if self.softcap is not None:
            self.fail("softcap", "must be None: MTA convolves the raw scores")


SPECS = (
    variant_spec(
        "mta",
        "Multi-Token Attention: scores convolved over queries and keys before softmax, heads mixed after it.",
        GOLOVNEVA,
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "d_ff": 64,
            "vocab_size": 64,
            "c_q": 2,
            "c_k": 3,
            "kq_conv_every": 1,
            "kernel_init": "normal",
        },
        verification="oracle:Golovneva et al. 2025 eq. 1-2 and §3.2-3.3 (fp64 loop oracle of multi_token_attention)",
    ),
)
