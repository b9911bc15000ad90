"""HGRN: a gated linear RNN whose forget gates are lower-bounded by a value that rises with depth (HGRN-1).

Paper: Qin, Yang & Zhong (2023), "Hierarchically Gated Recurrent Neural Network for Sequence Modeling", NeurIPS 2023,
https://arxiv.org/abs/2311.04823.

Implemented (elementwise over ``d·expand_ratio`` channels; one layer is HGRU, the token mixer of Fig. 1):

* the recurrence ``h_t = λ_t ⊙ h_{t-1} + (1 - λ_t) ⊙ c_t`` (the input gate tied to the forget gate, §3.2), run by
  :func:`edifice.ops.linear_recurrence` (a parallel scan for a whole sequence, one update per ``step``);
* §3.3: ``λ_t = γ^l + (1 - γ^l) ⊙ σ(x_t W_f)`` with the layer's lower bound ``γ^l = cumsum(softmax(Γ))_l -
  softmax(Γ)_0`` over the layers (:mod:`edifice_attention._lower_bounds`, shared with ``hgrn_v2``), computed in log
  space; the backbone hands each layer its bound (``layer_inputs``);
* as in the authors' released layer (fla's ``HGRNAttention``): ``c_t = SiLU(x_t W_i)``, the output gate and norm
  ``y_t = (RMSNorm(h_t) ⊙ SiLU(x_t W_g)) W_o``; pre-norm RMSNorm blocks with a SwiGLU feed-forward (§3.4's GLU channel
  mixer; fla's HGRN model).

Deviations (docs/design/hgrn.md): the paper's recurrence is complex-valued, ``λ_t ⊙ e^{iθ}`` with a learned,
data-independent phase ``θ`` (§3.2); this entry is real-valued, as the authors' released layer in fla and HGRN-2's
restatement of HGRN (HGRN2 eq. 1) are. fla's optional short convolutions are not built. :func:`from_fla` converts
fla's ``HGRNForCausalLM``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice.outputs import model_output
from edifice_attention._linear_attention import (
    MixerStackBackbone,
    fla_config_fields,
    fla_get,
    fla_source,
    load_fla,
    map_fla_state_dict,
)
from edifice_attention._lower_bounds import lower_bound_inputs, lower_bounded_log_forget
from edifice_attention.configs.hgrn import HGRNConfig

__all__ = ["HGRN", "HGRU", "HGRNState", "from_fla"]


@model_output
class HGRNState:
    """Decoding state of one HGRU: the hidden vector, constant size."""

    recurrent: Tensor
    """``h`` ``[B, d_model·expand_ratio]`` in fp32."""


class HGRU(nn.Module):
    """HGRN's token mixer ``[B, T, d_model] -> [B, T, d_model]``: the lower-bounded elementwise recurrence, gated."""

    def __init__(self, config: HGRNConfig) -> None:
        super().__init__()
        d, inner = config.d_model, config.inner_dim
        self.inner_dim = inner
        self.i_proj = nn.Linear(d, inner, bias=False)
        self.f_proj = nn.Linear(d, inner, bias=False)
        self.g_proj = nn.Linear(d, inner, bias=False)
        self.o_norm = get_norm("rmsnorm", inner, eps=config.norm_eps)
        self.o_proj = nn.Linear(inner, d, bias=False)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HGRNState:
        """A zero fp32 hidden vector; constant size, so ``max_len`` and ``dtype`` are not needed."""
        device = self.o_proj.weight.device if device is None else device
        return HGRNState(recurrent=torch.zeros(batch_size, self.inner_dim, device=device, dtype=torch.float32))

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: HGRNState | None = None,
        lower_bound: Tensor | None = None,
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask [B, T]`` marks valid positions; ``state`` is updated.

        ``lower_bound`` is this layer's ``γ^l [d·expand_ratio]`` (None: unbounded, the first layer).
        """
        log_f = lower_bounded_log_forget(self.f_proj(x), lower_bound)  # log λ_t, fp32
        c = F.silu(self.i_proj(x).float()) * -torch.expm1(log_f)  # (1 - λ_t) ⊙ c_t
        if mask is not None:  # a padded position keeps h: λ = 1, nothing written
            valid = mask[..., None]
            c, log_f = c * valid, log_f * valid
        h = ops.linear_recurrence(log_f.exp(), c, None if state is None else state.recurrent)  # (B, T, C) fp32
        if state is not None:
            state.recurrent.copy_(h[:, -1])
        y = self.o_norm(h) * F.silu(self.g_proj(x).float())
        out: Tensor = self.o_proj(y.to(x.dtype))
        return out


class HGRN(MixerStackBackbone):
    """HGRN backbone: pre-norm blocks of HGRU and SwiGLU, forget-gate lower bounds shared across the stack."""

    config_class: ClassVar[type[ArchConfig]] = HGRNConfig
    config: HGRNConfig

    def __init__(self, config: HGRNConfig) -> None:
        super().__init__(config)
        # Γ: one logit per layer and channel, zero-initialised (fla), a softmax over the layers.
        shape = (config.n_layers, config.inner_dim)
        self.lower_bounds = nn.Parameter(torch.zeros(shape)) if config.use_lower_bound else None

    def build_mixer(self, index: int) -> HGRU:
        """The HGRU of layer ``index``."""
        return HGRU(self.config)

    def reset_parameters(self) -> None:
        """The family's normal init, and Γ = 0 (bounds rising linearly with depth)."""
        super().reset_parameters()
        bounds = getattr(self, "lower_bounds", None)  # absent while the base class builds the layers
        if bounds is not None:
            nn.init.zeros_(bounds)

    def layer_inputs(self) -> list[dict[str, Any]]:
        """Each layer's ``lower_bound`` γ^l (none for the first, whose bound is 0, or without lower bounds)."""
        return lower_bound_inputs(self.lower_bounds, len(self.layers))


def from_fla(source: Any, **overrides: Any) -> HGRN:
    """Convert flash-linear-attention's ``HGRNForCausalLM`` (a model or ``(config, state_dict)``) to ``hgrn``."""
    hf, state_dict = fla_source(source, "HGRN")
    if fla_get(hf, "use_short_conv", False):
        raise CheckpointError("HGRN converter: use_short_conv=True is not supported by this model")
    plain = dict(hf) if isinstance(hf, dict) else hf.to_dict()
    shared = fla_config_fields({**plain, "num_heads": 1, "expand_k": 1.0, "expand_v": 1.0}, "HGRN")
    blocks = ("d_model", "n_layers", "vocab_size", "norm", "ffn", "d_ff", "norm_eps", "tie_embeddings")
    fields = {name: shared[name] for name in blocks}
    fields |= {"expand_ratio": float(fla_get(hf, "expand_ratio", 1)), "use_lower_bound": fla_get(hf, "use_lower_bound")}
    config = HGRNConfig(**{**fields, **overrides})
    weights = dict(state_dict)
    lower_bounds = weights.pop("model.lower_bounds", None)
    mapped = map_fla_state_dict(weights)
    if lower_bounds is not None:
        mapped["lower_bounds"] = lower_bounds
    model: HGRN = load_fla(HGRN, config, mapped)
    return model
