"""Config of ``delta_product``: DeltaProduct, n_h delta-rule (Householder) steps per token (torch-free)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import Paper, field
from edifice_recurrent.configs.delta_net import DeltaNetConfig, delta_spec

__all__ = ["SPECS", "DeltaProductConfig"]


@dataclasses.dataclass(kw_only=True)
class DeltaProductConfig(DeltaNetConfig):
    """DeltaProduct (Siems et al. 2025): each token writes n_householder keys/values, a product of Householders."""

    arch: str = field("delta_product", "Registry name of the architecture this config builds.")
    n_householder: int = field(2, "Delta-rule steps (generalised Householder factors) per token, n_h.")
    use_forget_gate: bool = field(False, "Gated DeltaProduct: decay the state once per token as Gated DeltaNet.")
    allow_neg_eigval: bool = field(True, "β in (0, 2): the paper's state-tracking setting (eigenvalues in [-1, 1]).")
    expand_v: float = field(2.0, "Value size per head is head_dim * expand_v (fla's GatedDeltaProduct layer: 2).")
    use_gate: bool = field(True, "Gate the normalised output with SiLU(x W_g) (fla's layer: use_output_gate=True).")

    aliases: ClassVar[Mapping[str, str]] = {**DeltaNetConfig.aliases, "num_householder": "n_householder"}

    def validate(self) -> None:
        """Check the number of Householder steps is positive."""
        super().validate()
        self.check_positive("n_householder")


SPECS = (
    delta_spec(
        "delta_product",
        "edifice_recurrent.configs.delta_product:DeltaProductConfig",
        "edifice_recurrent.delta_product:DeltaProduct",
        "DeltaProduct: n_h delta-rule (Householder) steps per token, a diagonal-plus-rank-n_h state transition.",
        Paper(
            "DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products",
            "Siems et al.",
            2025,
            "2502.10297",
        ),
        tiny={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 48, "d_in": 12, "chunk_size": 16},
        verification="oracle:token x Householder-step loop of Siems et al. 2025 eq. 4",
    ),
)
