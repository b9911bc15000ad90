"""Config and spec of ``ss_transformer``: an Edifice-original hybrid of parallel attention and a Mamba SSM, gated.

Torch-free; the model is :mod:`edifice_ssm.ss_transformer` and the equations are in ``docs/design/ss_transformer.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "SSTransformerConfig"]


@dataclasses.dataclass(kw_only=True)
class SSTransformerConfig(SequenceConfig):
    """State-space transformer: per layer, attention and a Mamba SSM in parallel, mixed by an input-dependent gate."""

    arch: str = field("ss_transformer", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Attention query heads.")
    n_kv_heads: int | None = field(None, "Attention key/value heads (grouped-query attention); None means n_heads.")
    head_dim: int | None = field(None, "Attention head size; None means d_model / n_heads.")
    window: int | None = field(None, "Causal sliding window of the attention; None attends to every past position.")
    rope_base: float = field(10000.0, "Base of the rotary position embedding of the attention.")
    d_state: int = field(16, "SSM state size N per channel of the Mamba branch.")
    expand: int = field(2, "Inner width of the Mamba branch, expand * d_model.")
    d_conv: int = field(4, "Kernel size of the Mamba branch's causal depthwise convolution.")
    dt_rank: int | None = field(None, "Rank of the Mamba branch's Δ projection; None means ceil(d_model / 16).")
    d_ff: int | None = field(None, "Hidden size of the SwiGLU feed-forward; None means 4 * d_model; 0 removes it.")
    norm_eps: float = field(1e-5, "Epsilon of every RMSNorm.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of the token embedding.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "state_size": "d_state",
        "expand_factor": "expand",
        "conv_size": "d_conv",
        "window_size": "window",
    }

    def validate(self) -> None:
        """Check sizes are positive, the heads tile the width and the rotary head size is even."""
        super().validate()
        self.check_positive("n_heads", "n_kv_heads", "head_dim", "window", "d_state", "expand", "d_conv", "dt_rank")
        self.check_positive("rope_base", "norm_eps", "init_std")
        if not self.rope_base > 1:
            self.fail("rope_base", "must be > 1 (RoPE's frequencies base^(-2i/d) must decrease)")
        self.check_positive("d_ff", allow_zero=True)
        if self.head_dim is None:
            self.check_divides("n_heads", "d_model")
        if self.n_kv_heads is not None:
            self.check_divides("n_kv_heads", "n_heads")
        if self.attention_head_dim % 2:
            self.fail("head_dim", f"must be even for the rotary embedding, got {self.attention_head_dim}")

    @property
    def attention_head_dim(self) -> int:
        """The resolved attention head size."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """The resolved feed-forward hidden size (0: no feed-forward)."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def time_step_rank(self) -> int:
        """The resolved rank of the Mamba branch's Δ projection."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)


SPECS = (
    ArchSpec(
        name="ss_transformer",
        family="ssm",
        distribution="edifice-ssm",
        summary="State-space transformer (Edifice-original): attention and a Mamba SSM in parallel, input-gated; FFN.",
        paper=None,
        config="edifice_ssm.configs.ss_transformer:SSTransformerConfig",
        model="edifice_ssm.ss_transformer:SSTransformer",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={
            "d_model": 16,
            "n_layers": 1,
            "d_in": 6,
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_state": 4,
            "d_conv": 3,
            "window": 6,
            "d_ff": 24,
        },
        verification="oracle:docs/design/ss_transformer.md (eqs. 1-5: attention, Mamba SSM, sigmoid gate, FFN)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
