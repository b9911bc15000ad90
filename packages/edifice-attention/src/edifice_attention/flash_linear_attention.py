"""flash-linear-attention's linear attention: undecayed causal linear attention with a selectable feature map.

Reference: Yang & Zhang (2024), "FLA: A Triton-Based Library for Hardware-Efficient Implementations of Linear Attention
Mechanism", https://github.com/fla-org/flash-linear-attention (arXiv:2410.10989), its ``LinearAttention`` layer and
``LinearAttentionForCausalLM``; the chunkwise form is that of Yang et al. (2023), "Gated Linear Attention Transformers
with Hardware-Efficient Training", arXiv:2312.06635, §3 (without decay).

Implemented (per head; the layer in :mod:`edifice_attention._linear_attention`, the mixer of ``linear_transformer``):

* ``S_t = S_{t-1} + φ_k(k_t) v_tᵀ``, ``o_t = S_tᵀ φ_q(q_t) / sqrt(d_φ)`` (no decay; ``d_φ`` the feature width), or
  with ``normalize=True`` ``o_t = φ_q(q_t)ᵀ S_t / (φ_q(q_t)ᵀ z_t + eps)``, ``z_t = Σ_{j<=t} φ_k(k_j)`` (eq. 5 of
  Katharopoulos et al. 2020), through :func:`edifice.ops.linear_attention`: chunked for a sequence (GLA §3.3 with
  ``chunk_size``), recurrent for one position;
* the feature maps (separate modules for q and k unless ``tie_feature_map_qk``): ``elementwise_product``
  ``φ(x) = (W_1 x + b_1) ⊙ (W_2 x + b_2)`` (fla's default); ``hedgehog`` ``φ(x) = softmax([2(Wx + b), -2(Wx + b)])``
  with ``W = I``, ``b = 0`` at init (Zhang et al. 2024, arXiv:2402.04347, eq. 6); ``t2r`` ``φ(x) = relu(Wx)`` (Kasai
  et al. 2021, arXiv:2103.13076, eq. 4); ``dpfp`` ``φ(x)_{i + 2d·j} = r_i r_{(i - j - 1) mod 2d}``, ``r = [relu(x),
  relu(-x)]``, ``j < ν`` (Schlag et al. 2021, arXiv:2102.11174, eq. 39); and ``elu_plus_one``, ``relu``, ``identity``;
* the model: pre-norm RMSNorm blocks with a SwiGLU feed-forward, a per-head RMSNorm on the read-out and ``W_O``, no
  output gate, no short convolution (``LinearAttentionForCausalLM``).

How it differs from ``linear_transformer``: the same mixer class and op, but that entry is Katharopoulos et al.'s
model (φ = elu + 1 and the normaliser always on, post-norm LayerNorm blocks with a ReLU feed-forward, no read-out norm)
and takes only parameter-free maps; this entry is fla's model with its learned maps and fla's defaults (no normaliser).

Deviations: none in the mechanism. fla's ``norm_q``/``norm_k`` (sum-normalised features) and grouped key/value heads
are not offered (the converter refuses them).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice_attention._linear_attention import fla_get, load_fla
from edifice_attention.configs.flash_linear_attention import LEARNED_FEATURE_MAPS, FlashLinearAttentionConfig
from edifice_attention.configs.linear_transformer import LinearTransformerConfig
from edifice_attention.linear_transformer import (
    EluPlusOne,
    LinearTransformer,
    NormalizedLinearAttention,
    fla_linear_attention_parts,
)

__all__ = [
    "DPFPFeatureMap",
    "FlashLinearAttention",
    "FlashLinearAttentionMixer",
    "HadamardFeatureMap",
    "HedgehogFeatureMap",
    "T2RFeatureMap",
    "feature_map",
    "from_fla",
]

#: fla's feature-map names and this entry's.
_FLA_NAMES = {
    "elementwise_product": "elementwise_product",
    "hedgehog": "hedgehog",
    "t2r": "t2r",
    "dpfp": "dpfp",
    "elu": "elu_plus_one",
    "relu": "relu",
    "identity": "identity",
}
#: ν of fla's ``DPFPFeatureMap`` (its layer does not pass one).
_FLA_DPFP_NU = 4


class HadamardFeatureMap(nn.Module):
    """``φ(x) = (W_1 x + b_1) ⊙ (W_2 x + b_2)`` (fla's 'elementwise_product'), width ``d``."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(head_dim, head_dim)
        self.layer2 = nn.Linear(head_dim, head_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., d]``."""
        out: Tensor = self.layer1(x) * self.layer2(x)
        return out


class HedgehogFeatureMap(nn.Module):
    """Hedgehog ``φ(x) = softmax([2(Wx + b), -2(Wx + b)])`` over ``2d`` features; ``W = I``, ``b = 0`` at init."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.layer = nn.Linear(head_dim, head_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The identity map (Hedgehog starts as softmax([2x, -2x]))."""
        nn.init.eye_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., 2d]``, positive and summing to one."""
        y = 2.0 * self.layer(x)
        return torch.softmax(torch.cat([y, -y], -1).float(), -1).to(x.dtype)


class T2RFeatureMap(nn.Module):
    """T2R ``φ(x) = relu(W x)`` (no bias), width ``d``."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.layer = nn.Linear(head_dim, head_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., d]``, non-negative."""
        return torch.relu(self.layer(x))


class DPFPFeatureMap(nn.Module):
    """DPFP: ``r = [relu(x), relu(-x)]``, features ``r ⊙ roll(r, j)`` for ``j = 1..ν``, width ``2νd``."""

    def __init__(self, nu: int) -> None:
        super().__init__()
        self.nu = nu

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., 2νd]``, non-negative."""
        r = torch.cat([torch.relu(x), torch.relu(-x)], -1)
        return torch.cat([r * r.roll(j, dims=-1) for j in range(1, self.nu + 1)], -1)


def feature_map(name: str, head_dim: int, *, nu: int = 4) -> tuple[nn.Module, int]:
    """The feature map ``name`` on ``head_dim`` inputs and its output width."""
    if name == "elementwise_product":
        return HadamardFeatureMap(head_dim), head_dim
    if name == "hedgehog":
        return HedgehogFeatureMap(head_dim), 2 * head_dim
    if name == "t2r":
        return T2RFeatureMap(head_dim), head_dim
    if name == "dpfp":
        return DPFPFeatureMap(nu), 2 * nu * head_dim
    if name == "elu_plus_one":
        return EluPlusOne(), head_dim
    if name == "relu":
        return nn.ReLU(), head_dim
    if name == "identity":
        return nn.Identity(), head_dim
    raise ValueError(f"feature_map: unknown feature map {name!r}")


class FlashLinearAttentionMixer(NormalizedLinearAttention):
    """fla's ``LinearAttention`` mixer: separate (or tied) feature maps for q and k; the state is ``[d_φ, d_v]``."""

    def __init__(self, config: LinearTransformerConfig) -> None:
        super().__init__(config)
        config = cast(FlashLinearAttentionConfig, config)
        name = config.feature_map or "identity"
        self.feature_map_q, width = feature_map(name, config.head_k_dim, nu=config.dpfp_nu)
        self.feature_map_k = (
            self.feature_map_q
            if config.tie_feature_map_qk
            else feature_map(name, config.head_k_dim, nu=config.dpfp_nu)[0]
        )
        self.state_k_dim = width

    def build_feature_map(self, name: str | None) -> nn.Module | None:
        """None: the maps are per q and k (:attr:`feature_map_q`, :attr:`feature_map_k`), applied in :meth:`gates`."""
        return None

    def gates(
        self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, **inputs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(φ_q(q), φ_k(k), v, None)``: no decay."""
        return self.feature_map_q(q), self.feature_map_k(k), v, None


class FlashLinearAttention(LinearTransformer):
    """fla's linear-attention backbone: pre-norm blocks of feature-mapped linear attention and a SwiGLU FFN."""

    config_class: ClassVar[type[ArchConfig]] = FlashLinearAttentionConfig
    config: FlashLinearAttentionConfig
    mixer_class = FlashLinearAttentionMixer

    def reset_parameters(self) -> None:
        """fla's normal(0, init_std) linears, then the feature maps' own initialisation (Hedgehog's identity)."""
        super().reset_parameters()
        for module in self.modules():
            if isinstance(module, HedgehogFeatureMap):
                module.reset_parameters()


def from_fla(source: Any, **overrides: Any) -> FlashLinearAttention:
    """Convert fla's ``LinearAttentionForCausalLM`` (a model or ``(config, state_dict)``), any of its feature maps.

    The shared mapping is :func:`edifice_attention.linear_transformer.fla_linear_attention_parts` (the normaliser's
    eps there uses the feature width ``d_φ``); this adds fla's tied maps and DPFP's ``ν = 4``.
    """
    hf, fields, weights = fla_linear_attention_parts(
        source, _FLA_NAMES, lambda name, d_k: feature_map(name, d_k, nu=_FLA_DPFP_NU)[1]
    )
    tied = bool(fla_get(hf, "tie_feature_map_qk", False)) and fields["feature_map"] in LEARNED_FEATURE_MAPS
    fields |= {"tie_feature_map_qk": tied, "dpfp_nu": _FLA_DPFP_NU}
    config = FlashLinearAttentionConfig(**{**fields, **overrides})
    model: FlashLinearAttention = load_fla(FlashLinearAttention, config, weights)
    return model
