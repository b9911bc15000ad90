"""GLA v2: Gated Linear Attention with causal short convolutions on q, k, v and a long-memory forget-gate init.

Papers: Yang, Wang, Shen, Panda & Kim (2023), "Gated Linear Attention Transformers with Hardware-Efficient Training",
ICML 2024, https://arxiv.org/abs/2312.06635 (the layer, :mod:`edifice_attention.gla`); the short convolutions are
those of the authors' follow-up, Yang, Wang, Zhang, Shen & Kim (2024), "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length", NeurIPS 2024, https://arxiv.org/abs/2406.06484 (its layer: a depthwise causal
convolution with SiLU on q, k, v, which its ablations find important), as flash-linear-attention's
``GatedLinearAttention`` applies them to GLA (``use_short_conv=True``). The catalogue's "Yang et al. 2024 (GLA
follow-up)"; ``docs/design/gla_v2.md`` gives the reading.

Implemented (per head; everything else is ``gla``'s):

* ``q, k, v = SiLU(ShortConv(x W_{q,k,v}))``, a causal depthwise convolution of ``conv_size`` taps (4) per channel
  (:class:`~edifice.blocks.conv.CausalDepthwiseConv1d`, its decoding state carried by ``step``);
* GLA eq. 3 / §4.4: ``S_t = Diag(α_t) S_{t-1} + k_tᵀ v_t``, ``α_t = σ(x_t W_α1 W_α2 + b_α)^{1/τ}``,
  :func:`edifice.ops.gated_linear_attention` (chunked with secondary chunking, recurrent for ``step``);
* the forget-gate bias ``b_α`` initialised to ``forget_gate_init`` (3: ``α ≈ σ(3)^{1/16} ≈ 0.997``, a memory of
  hundreds of steps at the start of training) where GLA initialises it to 0 (``α ≈ 0.958``).

Deviations: none beyond ``gla``'s. ``head_dim`` sets the key size per head directly (the catalogue's option).
:func:`from_fla` converts fla's ``GLAForCausalLM`` (any ``use_short_conv``; the v2 default is on).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, cast

from torch import nn

from edifice.config import ArchConfig
from edifice_attention._linear_attention import load_fla
from edifice_attention.configs.gla_v2 import GLAV2Config
from edifice_attention.gla import GLA, GatedLinearAttention
from edifice_attention.gla import from_fla as gla_from_fla

__all__ = ["GLAV2", "from_fla"]


class GLAV2(GLA):
    """GLA v2 backbone: GLA's blocks with short convolutions and the forget-gate bias set to ``forget_gate_init``."""

    config_class: ClassVar[type[ArchConfig]] = GLAV2Config
    config: GLAV2Config
    mixer_class = GatedLinearAttention

    def reset_parameters(self) -> None:
        """GLA's init, then ``b_α = forget_gate_init`` in every layer's decay projection."""
        super().reset_parameters()
        for mixer in self.mixers():
            up = cast(nn.Linear, cast(GatedLinearAttention, mixer).gk_proj[1])  # W_α2 with the bias b_α
            nn.init.constant_(up.bias, self.config.forget_gate_init)


def from_fla(source: Any, **overrides: Any) -> GLAV2:
    """Convert flash-linear-attention's ``GLAForCausalLM`` (a model or ``(config, state_dict)``) to ``gla_v2``.

    The checkpoint is read (and refused where GLA cannot express it) by ``gla``'s converter; its weights and config
    then build the ``gla_v2`` model, whose layers are the same.
    """
    gla = gla_from_fla(source, **overrides)
    fields = {f.name: getattr(gla.config, f.name) for f in dataclasses.fields(gla.config) if f.name != "arch"}
    model: GLAV2 = load_fla(GLAV2, GLAV2Config(**fields), dict(gla.state_dict()))
    return model
