"""Linear transformer: causal attention whose softmax is replaced by the kernel ``φ(q)ᵀφ(k)``, run as an RNN.

Paper: Katharopoulos, Vyas, Pappas & Fleuret (2020), "Transformers are RNNs: Fast Autoregressive Transformers with
Linear Attention", ICML 2020, https://arxiv.org/abs/2006.16236.

Implemented (per head; the layer in :mod:`edifice_attention._linear_attention`):

* eq. 5 / eq. 6, causal: ``V'_i = φ(Q_i)ᵀ Σ_{j<=i} φ(K_j) V_jᵀ / (φ(Q_i)ᵀ Σ_{j<=i} φ(K_j))``;
* §3.2.1, the feature map ``φ(x) = elu(x) + 1`` (positive, so the normaliser is);
* eqs. 16-20, the RNN form: ``s_i = s_{i-1} + φ(K_i) V_iᵀ``, ``z_i = z_{i-1} + φ(K_i)``, ``V'_i = φ(Q_i)ᵀ s_i /
  (φ(Q_i)ᵀ z_i)`` (the ``step`` path). Both sums are one linear-attention state: the values get a column of ones,
  ``[V_i, 1]``, so ``S = [s, z]`` is ``[d_k, d_v + 1]`` and :func:`edifice.ops.linear_attention` (no decay, query scale
  1: the scale cancels in the ratio) computes numerator and normaliser together in its chunked (training), parallel
  and recurrent forms;
* the transformer around it (§3.1), as the authors' fast-transformers builder makes it: multi-head projections
  ``W_Q, W_K, W_V, W_O``, post-norm residual blocks ``LayerNorm(x + Attn(x))``, ``LayerNorm(x + FFN(x))`` with a
  ReLU feed-forward of width ``4d``; the normaliser adds ``eps = 1e-6`` (fast-transformers' ``CausalLinearAttention``).

Deviations: none in the mechanism. fast-transformers' projections have biases; these have none (the family's layer,
as in flash-linear-attention's ``LinearAttention``). ``feature_map='relu'``/``'identity'`` with ``normalize=False``,
``output_norm='rmsnorm'`` and ``norm_position='pre'`` give flash-linear-attention's unnormalised variants (queries
then scaled by ``1/sqrt(d_k)``, as fla does); :func:`from_fla` converts fla's ``LinearAttentionForCausalLM`` with a
parameter-free feature map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.blocks.ffn import get_ffn
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice_attention._linear_attention import (
    LinearAttentionBackbone,
    LinearAttentionMixer,
    fla_config_fields,
    fla_get,
    fla_source,
    load_fla,
    map_fla_state_dict,
)
from edifice_attention.configs.linear_transformer import LinearTransformerConfig

__all__ = [
    "EluPlusOne",
    "LinearTransformer",
    "NormalizedLinearAttention",
    "fla_linear_attention_parts",
    "from_fla",
]

#: fla's parameter-free feature maps and this entry's names for them (its learned maps are other mechanisms).
_FLA_FEATURE_MAPS = {"elu": "elu_plus_one", "relu": "relu", "identity": "identity"}


class EluPlusOne(nn.Module):
    """``φ(x) = elu(x) + 1 > 0`` (§3.2.1)."""

    def forward(self, x: Tensor) -> Tensor:
        """Elementwise ``elu(x) + 1``."""
        return F.elu(x) + 1.0


class NormalizedLinearAttention(LinearAttentionMixer):
    """Causal linear attention with the normaliser of eq. 5, its sums carried in one ``[d_k, d_v + 1]`` state."""

    def __init__(self, config: LinearTransformerConfig) -> None:
        super().__init__(config)
        self.normalize = config.normalize
        self.eps = config.normalizer_eps
        if config.normalize:
            self.scale = 1.0  # the paper has no 1/sqrt(d_k): with the normaliser it cancels (up to eps)
            self.state_v_dim = config.head_v_dim + 1  # [s, z]: the numerator's state and the normaliser's

    def build_feature_map(self, name: str | None) -> nn.Module | None:
        """``elu_plus_one`` (the paper's φ), else the activation of that name."""
        return EluPlusOne() if name == "elu_plus_one" else super().build_feature_map(name)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, initial: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``φ(q)ᵀ s / (φ(q)ᵀ z + eps)`` (eqs. 5, 20): one op call on ``[v, 1]``; the state is ``[s, z]``."""
        if not self.normalize:
            return super().attend(q, k, v, g, initial)
        ones = torch.ones_like(v[..., :1])
        o, final = super().attend(q, k, torch.cat([v, ones], -1), g, initial)
        o = o.float()
        return (o[..., :-1] / (o[..., -1:] + self.eps)).to(v.dtype), final


class LinearTransformer(LinearAttentionBackbone):
    """Linear-transformer backbone: residual blocks of normalised linear attention and a feed-forward (§3.1)."""

    config_class: ClassVar[type[ArchConfig]] = LinearTransformerConfig
    config: LinearTransformerConfig
    mixer_class = NormalizedLinearAttention

    def build_layer(self, index: int) -> nn.Module:
        """One residual block, post-norm by default (fast-transformers' ``TransformerEncoderLayer``)."""
        c = self.config
        ffn = self.build_ffn() if c.ffn_hidden else None
        return TransformerBlock(
            c.d_model,
            self.build_mixer(index),
            ffn,
            norm=c.norm,
            norm_eps=c.norm_eps,
            norm_position=c.norm_position,
            dropout=c.dropout,
        )

    def build_ffn(self) -> nn.Module:
        """``Linear -> ffn_activation -> Linear`` with biases for ``ffn='mlp'``; the gated kinds as the family's."""
        c = self.config
        if c.ffn != "mlp":
            return super().build_ffn()
        return get_ffn("mlp", c.d_model, c.ffn_hidden, activation=c.ffn_activation)


def fla_linear_attention_parts(
    source: Any, feature_maps: Mapping[str, str], width: Callable[[str, int], int]
) -> tuple[Any, dict[str, Any], dict[str, Tensor]]:
    """``(fla config, config fields, mapped weights)`` of fla's ``LinearAttentionForCausalLM`` (model or pair).

    ``feature_maps`` maps fla's feature-map names to the entry's (others raise); ``width(name, d_k)`` is the mapped
    width ``d_φ``. fla's model is pre-norm RMSNorm blocks with SwiGLU and a per-head RMSNorm read-out; its normaliser
    (``norm_feature_map``) divides by ``scale·φ(q)ᵀz + 1e-10`` with ``scale = d_φ^-1/2``, which is ours (scale 1)
    with ``eps = 1e-10·sqrt(d_φ)``.
    """
    hf, state_dict = fla_source(source, "LinearAttention")
    feature_map = fla_get(hf, "feature_map", "elementwise_product")
    if feature_map not in feature_maps:
        raise CheckpointError(
            f"LinearAttention converter: feature_map={feature_map!r} is not supported by this model "
            f"(supported: {', '.join(feature_maps)})"
        )
    for name in ("norm_q", "norm_k"):
        if fla_get(hf, name, False):
            raise CheckpointError(f"LinearAttention converter: {name}=True is not supported by this model")
    fields = fla_config_fields(hf, "LinearAttention")
    head_k_dim = round(fields["d_model"] * fields["expand_k"]) // fields["n_heads"]
    fields |= {
        "feature_map": feature_maps[feature_map],
        "normalize": bool(fla_get(hf, "norm_feature_map", False)),
        "normalizer_eps": 1e-10 * width(feature_maps[feature_map], head_k_dim) ** 0.5,
        "use_output_gate": False,
        "output_norm": "rmsnorm",
        "norm_position": "pre",
    }
    weights = {
        key.replace(".mixer.norm.", ".mixer.o_norm."): value for key, value in map_fla_state_dict(state_dict).items()
    }
    return hf, fields, weights


def from_fla(source: Any, **overrides: Any) -> LinearTransformer:
    """Convert fla's ``LinearAttentionForCausalLM`` (a model or ``(config, state_dict)``) to ``linear_transformer``.

    Parameter-free feature maps only (:func:`fla_linear_attention_parts` gives the mapping).
    """
    _, fields, weights = fla_linear_attention_parts(source, _FLA_FEATURE_MAPS, lambda name, d_k: d_k)
    config = LinearTransformerConfig(**{**fields, **overrides})
    model: LinearTransformer = load_fla(LinearTransformer, config, weights)
    return model
