"""Config of ``gated_delta_net``: Gated DeltaNet, the delta rule with a data-dependent decay α_t (torch-free)."""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_recurrent.configs.delta_net import DeltaNetConfig, delta_spec

__all__ = ["SPECS", "GatedDeltaNetConfig"]


@dataclasses.dataclass(kw_only=True)
class GatedDeltaNetConfig(DeltaNetConfig):
    """Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024): DeltaNet plus a Mamba2-style decay gate and output gate."""

    arch: str = field("gated_delta_net", "Registry name of the architecture this config builds.")
    expand_v: float = field(2.0, "Value size per head is head_dim * expand_v (the paper doubles it).")
    use_gate: bool = field(True, "Gate the normalised output with SiLU(x W_g) (gated RMSNorm, paper Fig. 1).")


SPECS = (
    delta_spec(
        "gated_delta_net",
        "edifice_recurrent.configs.gated_delta_net:GatedDeltaNetConfig",
        "edifice_recurrent.gated_delta_net:GatedDeltaNet",
        "Gated DeltaNet: the delta rule with a data-dependent decay gate α_t, chunked WY training form.",
        Paper(
            "Gated Delta Networks: Improving Mamba2 with Delta Rule", "Yang, Kautz & Hatamizadeh", 2024, "2412.06464"
        ),
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "head_dim": 8, "d_ff": 48, "d_in": 12, "chunk_size": 16},
        verification="oracle:fla.ops.gated_delta_rule.naive.naive_recurrent_gated_delta_rule",
    ),
)
