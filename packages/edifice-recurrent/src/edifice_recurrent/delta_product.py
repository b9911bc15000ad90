"""DeltaProduct: ``n_h`` delta-rule steps per token, so each token's state transition is a product of ``n_h``
generalised Householder matrices (diagonal plus rank ``n_h``), trained in chunked WY form.

Paper: Siems, Carstensen, Zela, Hutter, Pontil & Grazzi (2025), "DeltaProduct: Improving State-Tracking in Linear
RNNs via Householder Products", NeurIPS 2025, https://arxiv.org/abs/2502.10297.

Implemented (per head, state ``S ∈ R^{d_k×d_v}``; layer in :mod:`edifice_recurrent._delta_layers`):

* eq. 4 / §3: for token ``t`` and ``j = 1..n_h``, with ``k_{t,j} = normalize(x_t W_k^j)``, ``v_{t,j} = x_t W_v^j``,
  ``β_{t,j} = 2σ(x_t W_β^j)`` (``allow_neg_eigval``, the paper's state-tracking setting; ``σ`` otherwise):
  ``S_{t,j} = (I - β_{t,j} k_{t,j} k_{t,j}ᵀ) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}ᵀ``, ``S_{t,0} = S_{t-1}``,
  ``S_t = S_{t,n_h}``; the transition ``Π_j (I - β_{t,j} k_{t,j} k_{t,j}ᵀ)`` has eigenvalues in [-1, 1];
* the output reads the state once per token, after its last step: ``o_t = S_tᵀ q_t``;
* Gated DeltaProduct (``use_forget_gate``): the state decays by Gated DeltaNet's ``α_t`` once per token;
* §3 implementation: the ``n_h`` steps are interleaved into a sequence of length ``T·n_h`` (zero query except at the
  last step) and run through the chunked delta-rule op, as the paper's reference code does; ``step`` carries the
  constant-size state.

Defaults follow flash-linear-attention's ``GatedDeltaProduct`` layer: an output gate (``use_gate=True``) and values
twice the key size (``expand_v=2``); ``use_forget_gate=False`` as fla's model config (its layer alone defaults to
True: that is Gated DeltaProduct, ``use_forget_gate=True`` here). Initialisation as fla's models: N(0, 0.02) linear
and short-convolution weights; with the forget gate, Mamba-2's ``A ~ U(0, 16)`` and log-uniform ``Δ``.

Deviations: none in the mechanism; the blocks are the flash-linear-attention ones (pre-norm, SwiGLU FFN).
"""

from __future__ import annotations

from typing import ClassVar

from edifice.config import ArchConfig
from edifice_recurrent._delta_layers import DeltaBackbone
from edifice_recurrent.configs.delta_product import DeltaProductConfig

__all__ = ["DeltaProduct"]


class DeltaProduct(DeltaBackbone):
    """DeltaProduct sequence backbone: pre-norm blocks of an ``n_h``-step delta-rule mixer and a SwiGLU FFN."""

    config_class: ClassVar[type[ArchConfig]] = DeltaProductConfig
    config: DeltaProductConfig

    def mixer_options(self) -> dict[str, object]:
        """``n_householder`` delta-rule steps per token, decayed once per token when ``use_forget_gate``."""
        return {"n_householder": self.config.n_householder, "gated": self.config.use_forget_gate}
