"""HGRN-2: a gated linear RNN whose state is expanded by an outer product, i.e. linear attention with key ``1 - f``.

Paper: Qin, Yang, Sun, Shen, Li, Sun & Zhong (2024), "HGRN2: Gated Linear RNNs with State Expansion", COLM 2024,
https://arxiv.org/abs/2404.07904 (the lower bound is HGRN's: Qin, Yang & Zhong, NeurIPS 2023,
https://arxiv.org/abs/2311.04823, §3.3).

Implemented (per head, state ``H_t ∈ R^{d_k×d_v}``; the layer in :mod:`edifice_attention._linear_attention`):

* HGRN-2 eq. 4 (state expansion of HGRN's ``h_t = f_t ⊙ h_{t-1} + (1 - f_t) ⊙ i_t``):
  ``H_t = Diag(f_t) H_{t-1} + (1 - f_t) ⊗ i_t``, ``o_t = q_t H_t``; the forget gate ``f_t`` is the decay of
  :func:`edifice.ops.gated_linear_attention` and its complement ``1 - f_t`` is the key, so the chunked (GLA-style,
  the training path), parallel and recurrent (``step``) forms are the op's; the query is scaled by ``1/sqrt(d_k)``
  (the authors' fla layer);
* HGRN §3.3 / HGRN-2 §3: ``f_t = γ^l + (1 - γ^l) σ(x_t W_f)`` with the layer's lower bound
  ``γ^l = [cumsum(softmax(Γ, dim=layers))]_l - softmax(Γ)_0`` (``Γ ∈ R^{L×d_k}``, zero-initialised; the first layer's
  bound is 0), computed in log space as ``log f = logaddexp(log γ, log(1 - γ) + logsigmoid(x W_f))``; the backbone
  computes all bounds once per call and hands each layer its own (``layer_inputs``);
* the released layer (fla's ``HGRN2Attention``, by the authors): ``q_t = SiLU(x_t W_q)``, ``i_t = x_t W_i``, the
  read-out ``RMSNorm(Concat(o_h)) W_o`` (one RMSNorm over all heads, no output gate), heads of ``d/n_heads`` keys
  and values (fla's ``expand_ratio``); pre-norm RMSNorm blocks with a SwiGLU feed-forward (fla's HGRN2 model).

Deviations: none from the released model. fla's optional short convolution (no activation after it) is refused
(HGRN-2's paper has none). :func:`from_fla` converts fla's ``HGRN2ForCausalLM``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice_attention._linear_attention import (
    LinearAttentionBackbone,
    LinearAttentionMixer,
    fla_config_fields,
    fla_get,
    fla_source,
    load_fla,
    map_fla_state_dict,
)
from edifice_attention._lower_bounds import layer_lower_bounds, lower_bound_inputs, lower_bounded_log_forget
from edifice_attention.configs.hgrn_v2 import HGRN2Config

__all__ = ["HGRN2", "HGRN2Attention", "from_fla", "layer_lower_bounds"]


class HGRN2Attention(LinearAttentionMixer):
    """HGRN-2's token mixer: forget gate ``f`` (lower-bounded) as the per-channel decay, ``1 - f`` as the key."""

    vector_decay = True

    def gates(
        self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, **inputs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``q = SiLU(x W_q)``, ``log f = log(γ + (1-γ) σ(x W_f))``, key ``1 - f`` (``k`` holds ``x W_f``)."""
        bound = inputs.get("lower_bound")  # γ^l [H·K], absent for the first layer (whose bound is 0)
        g = lower_bounded_log_forget(k, None if bound is None else bound.view(self.n_heads, self.head_k_dim))
        return F.silu(q), (1 - g.exp()).to(v.dtype), v, g


class HGRN2(LinearAttentionBackbone):
    """HGRN-2 backbone: pre-norm blocks of HGRN-2 attention and SwiGLU, lower bounds shared across the stack."""

    config_class: ClassVar[type[ArchConfig]] = HGRN2Config
    config: HGRN2Config
    mixer_class = HGRN2Attention

    def __init__(self, config: HGRN2Config) -> None:
        super().__init__(config)
        key_dim = config.n_heads * config.head_k_dim
        # Γ: one logit per layer and key channel, zero-initialised (fla), a softmax over the layers.
        self.lower_bounds = nn.Parameter(torch.zeros(config.n_layers, key_dim)) if config.use_lower_bound else None

    def reset_parameters(self) -> None:
        """The family's normal init, and Γ = 0 (equal shares: bounds rising linearly with depth)."""
        super().reset_parameters()
        bounds = getattr(self, "lower_bounds", None)  # absent while the base class builds the layers
        if bounds is not None:
            nn.init.zeros_(bounds)

    def layer_inputs(self) -> list[dict[str, Any]]:
        """Each layer's ``lower_bound`` γ^l (none for the first, whose bound is 0, or without lower bounds)."""
        return lower_bound_inputs(self.lower_bounds, len(self.layers))


def from_fla(source: Any, **overrides: Any) -> HGRN2:
    """Convert flash-linear-attention's ``HGRN2ForCausalLM`` (a model or ``(config, state_dict)``) to ``hgrn_v2``."""
    hf, state_dict = fla_source(source, "HGRN2")
    weights = dict(state_dict)
    lower_bounds = weights.pop("model.lower_bounds", None)
    d = fla_get(hf, "hidden_size")
    ratio = fla_get(hf, "expand_ratio") or d // fla_get(hf, "num_heads")
    fields = {
        **fla_config_fields({**_as_dict(hf), "expand_k": 1.0, "expand_v": 1.0, "num_heads": d // ratio}, "HGRN2"),
        "use_output_gate": False,
        "output_norm_per_head": False,
        "use_lower_bound": bool(fla_get(hf, "use_lower_bound", True)),
    }
    config = HGRN2Config(**{**fields, **overrides})
    rename = {"f_proj": "k_proj", "i_proj": "v_proj"}
    mapped = {}
    for key, value in map_fla_state_dict(weights).items():
        parts = key.split(".")
        mapped[".".join(rename.get(p, p) for p in parts)] = value
    if lower_bounds is not None:
        mapped["lower_bounds"] = lower_bounds
    model: HGRN2 = load_fla(HGRN2, config, mapped)
    return model


def _as_dict(config: Any) -> dict[str, Any]:
    """An fla config object or dict as a plain dict."""
    return dict(config) if isinstance(config, dict) else config.to_dict()
