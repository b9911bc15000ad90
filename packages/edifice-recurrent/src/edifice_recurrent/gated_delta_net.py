"""Gated DeltaNet: the delta rule with a data-dependent decay of the state (Mamba2's gate), chunked WY training form.

Paper: Yang, Kautz & Hatamizadeh (2024), "Gated Delta Networks: Improving Mamba2 with Delta Rule", ICLR 2025,
https://arxiv.org/abs/2412.06464.

Implemented (per head, state ``S ∈ R^{d_k×d_v}``; layer in :mod:`edifice_recurrent._delta_layers`):

* eq. 10 (gated delta rule): ``S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``, ``o_t = S_tᵀ q_t``;
* the gate as in Mamba2 / the reference code: ``α_t = exp(g_t)``, ``g_t = -exp(A_log) · softplus(x_t W_α + dt_bias)``
  per head, ``A ~ U(0, 16)``, ``dt ~ logU(1e-3, 0.1)``; ``β_t = σ(x_t W_β)``;
* §3.3, eqs. 11-12: the chunkwise form, the WY representation extended with the cumulative decay ``γ`` inside each
  chunk (:func:`edifice.ops.gated_delta_rule`); ``step`` carries the constant-size state;
* Fig. 1 block: SiLU short convolutions on q, k, v; L2-normalised q, k; per-head RMSNorm of the output gated by
  ``SiLU(x W_g)``; value heads ``expand_v = 2`` times wider than key heads; pre-norm blocks with a SwiGLU FFN;
* initialisation as fla's ``GatedDeltaNetPreTrainedModel``: N(0, 0.02) linear, embedding and short-convolution
  weights, zero biases.

Deviations: the paper's hybrid variants (with sliding-window attention layers) are not part of this entry.
"""

from __future__ import annotations

from typing import ClassVar

from edifice.config import ArchConfig
from edifice_recurrent._delta_layers import DeltaBackbone
from edifice_recurrent.configs.gated_delta_net import GatedDeltaNetConfig

__all__ = ["GatedDeltaNet"]


class GatedDeltaNet(DeltaBackbone):
    """Gated DeltaNet sequence backbone: pre-norm blocks of a gated delta-rule mixer and a SwiGLU FFN."""

    config_class: ClassVar[type[ArchConfig]] = GatedDeltaNetConfig
    config: GatedDeltaNetConfig

    def mixer_options(self) -> dict[str, object]:
        """One delta-rule step per token, with the decay gate α_t."""
        return {"n_householder": 1, "gated": True}
