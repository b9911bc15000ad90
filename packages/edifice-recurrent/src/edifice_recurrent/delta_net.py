"""DeltaNet: linear attention whose matrix state is corrected by the delta rule, trained in chunked WY form.

Paper: Yang, Wang, Zhang, Shen & Kim (2024), "Parallelizing Linear Transformers with the Delta Rule over Sequence
Length", NeurIPS 2024, https://arxiv.org/abs/2406.06484; the delta rule itself is from Schlag, Irie & Schmidhuber
(2021), "Linear Transformers Are Secretly Fast Weight Programmers", https://arxiv.org/abs/2102.11174.

Implemented (per head, state ``S ∈ R^{d_k×d_v}``; see :mod:`edifice_recurrent._delta_layers` for the layer):

* eq. 1 (delta rule): ``S_t = S_{t-1} - β_t k_t (k_tᵀ S_{t-1}) + β_t k_t v_tᵀ``, i.e.
  ``S_t = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``, ``o_t = S_tᵀ q_t`` with ``β_t = σ(x_t W_β)``;
* §3.2-3.3, eqs. 6-9: the chunkwise-parallel form with the WY representation / UT transform of the products of
  Householder-like matrices (:func:`edifice.ops.delta_rule`), used for training; ``step`` runs the same op on the new
  positions from the carried state (the recurrent form, constant-size state);
* §4.1 architecture: SiLU short convolutions on q, k, v, L2-normalised q and k (so ``I - β k kᵀ`` has eigenvalues in
  [1 - β, 1], stable), per-head output RMSNorm (optionally gated by ``SiLU(x W_g)``), Llama-style pre-norm blocks
  with a SwiGLU FFN.

Deviations: queries are scaled by ``d_k^{-1/2}`` as in flash-linear-attention (the per-head output RMSNorm makes this
immaterial up to its epsilon); the optional ``allow_neg_eigval`` (β ∈ (0, 2), Grazzi et al. 2024) is off by default.
"""

from __future__ import annotations

from typing import ClassVar

from edifice.config import ArchConfig
from edifice_recurrent._delta_layers import DeltaBackbone
from edifice_recurrent.configs.delta_net import DeltaNetConfig

__all__ = ["DeltaNet"]


class DeltaNet(DeltaBackbone):
    """DeltaNet sequence backbone: pre-norm blocks of a delta-rule mixer and a SwiGLU FFN."""

    config_class: ClassVar[type[ArchConfig]] = DeltaNetConfig
    config: DeltaNetConfig
