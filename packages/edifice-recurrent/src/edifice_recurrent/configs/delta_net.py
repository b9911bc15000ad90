"""Config of ``delta_net``: DeltaNet, linear attention with the delta-rule update (torch-free).

:class:`DeltaNetConfig` holds the fields the three delta-rule entries share (``gated_delta_net`` and
``delta_product`` subclass it); the model is :mod:`edifice_recurrent.delta_net`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "DeltaNetConfig", "delta_spec"]


@dataclasses.dataclass(kw_only=True)
class DeltaNetConfig(SequenceConfig):
    """DeltaNet (Yang et al. 2024): short conv, L2-normalised q/k, sigmoid β, delta-rule state, per-head RMSNorm."""

    arch: str = field("delta_net", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Number of heads, each with its own [head_dim, head_v_dim] state.")
    head_dim: int | None = field(None, "Key/query size per head; None means d_model // n_heads.")
    expand_v: float = field(1.0, "Value size per head is head_dim * expand_v.")
    use_short_conv: bool = field(True, "Causal depthwise convolution + SiLU on q, k and v (else SiLU only).")
    conv_size: int = field(4, "Kernel size of the short convolutions.")
    conv_bias: bool = field(False, "Bias in the short convolutions.")
    use_gate: bool = field(False, "Gate the normalised output with SiLU(x W_g) (gated RMSNorm).")
    allow_neg_eigval: bool = field(False, "β in (0, 2) instead of (0, 1): I - β k kᵀ may have a negative eigenvalue.")
    d_ff: int | None = field(
        None, "Hidden size of each block's SwiGLU FFN; None means 8/3·d_model rounded up to 8; 0 none."
    )
    norm_eps: float = field(1e-5, "Epsilon of the block norms and the output RMSNorm.")
    chunk_size: int = field(64, "Steps per chunk of the chunked (WY) training form.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of linear and embedding weights.")

    aliases: ClassVar[Mapping[str, str]] = {**SequenceConfig.aliases, "intermediate_size": "d_ff"}

    def validate(self) -> None:
        """Check head sizes divide evenly and every size is positive."""
        super().validate()
        self.check_positive("n_heads", "head_dim", "expand_v", "conv_size", "norm_eps", "chunk_size", "init_std")
        self.check_positive("d_ff", allow_zero=True)
        if self.head_dim is None and self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")
        value = self.head_size * self.expand_v
        if not math.isclose(value, round(value)) or round(value) < 1:
            self.fail("expand_v", f"head_dim * expand_v = {value} must be a positive integer")

    @property
    def head_size(self) -> int:
        """The resolved key/query size per head."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def head_v_size(self) -> int:
        """The resolved value size per head, ``head_dim * expand_v``."""
        return round(self.head_size * self.expand_v)

    @property
    def ffn_hidden(self) -> int:
        """The resolved FFN hidden size (0: no FFN): ``d_ff``, else ⌈(8/3)·d_model / 8⌉·8 (Llama's 2/3·4d)."""
        return self.d_ff if self.d_ff is not None else 8 * math.ceil(8 * self.d_model / 3 / 8)


def delta_spec(name: str, config: str, model: str, summary: str, paper: Paper, **extra: object) -> ArchSpec:
    """The spec shared by the delta-rule entries: causal, stateful, padding-exact sequence backbones."""
    return ArchSpec(
        name=name,
        family="recurrent",
        distribution="edifice-recurrent",
        summary=summary,
        paper=paper,
        config=config,
        model=model,
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        causal=True,
        stateful=True,
        variable_length=True,
        **extra,  # type: ignore[arg-type]
    )


SPECS = (
    delta_spec(
        "delta_net",
        "edifice_recurrent.configs.delta_net:DeltaNetConfig",
        "edifice_recurrent.delta_net:DeltaNet",
        "DeltaNet: linear attention whose state is corrected by the delta rule, trained in chunked WY form.",
        Paper(
            "Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
            "Yang et al.",
            2024,
            "2406.06484",
        ),
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 48, "d_in": 12, "chunk_size": 16},
        verification="oracle:fla.ops.delta_rule.naive.delta_rule_recurrence",
    ),
)
