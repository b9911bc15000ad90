"""Mixture-of-Mamba: Mamba blocks whose projections are modality-specific, selected per token (modality-aware sparsity).

Multi-modal sequences interleave tokens of several modalities (text, image, speech). Mixture-of-Mamba keeps
one Mamba block per layer and one selective scan over the whole interleaved sequence, but decouples the block's
projections by modality: each token goes through the ``in_proj``, ``x_proj``, ``dt_proj`` and ``out_proj`` of its
own modality -- a mixture of experts routed by the (known) modality rather than by a learned router, following
Mixture-of-Transformers (Liang et al. 2024, arXiv:2411.04996). The causal convolution, the state matrix ``A`` and
the skip ``D`` are shared. Compute per token is that of one dense Mamba block; parameters grow with the modalities.

Paper: Weixin Liang, Junhong Shen, Genghan Zhang, Ning Dong, Luke Zettlemoyer and Lili Yu, "Mixture-of-Mamba:
Enhancing Multi-Modal State-Space Models with Modality-Aware Sparsity", 2025, https://arxiv.org/abs/2501.16295.

Equations (token ``t`` of modality ``m_t``; the Mamba equation numbers are Gu & Dao 2023's)::

    (x_t, z_t) = W_in^{m_t} u_t                                   modality-specific input projection
    x = SiLU(causal_conv1d(x))                                    shared convolution, across modalities
    (δ_t, B_t, C_t) = W_x^{m_t} x_t;   Δ_t = softplus(W_dt^{m_t} δ_t + b_dt^{m_t})   modality-specific
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,   y_t = C_t h_t + D x_t               shared A, D (eqs. 2a-2b, 4)
    out_t = W_out^{m_t} (y_t ⊙ SiLU(z_t))                         modality-specific output projection
    layer:  h = x + MixtureOfMamba(RMSNorm(x), m)                 pre-norm residual, final RMSNorm

``split_projections`` names the decoupled projections (all four by default; fewer reproduce the paper's ablations).
With one modality the model is :class:`edifice_ssm.mamba.Mamba` exactly (same weights, a modality axis of size 1).

Initialisation: Mamba's, drawn independently for every modality (as the reference code does), and each layer's
``out_proj`` divided by ``sqrt(n_layers)`` as :class:`~edifice_ssm.mamba.Mamba` does.

Deviation: in eager mode tokens are grouped by modality and each projection runs once per group, as the reference;
under ``torch.compile`` every modality's projection runs on every token and each token keeps its own (static shapes,
same values, more FLOPs). The block's RMSNorm is shared across modalities (the paper decouples the Mamba block).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.backbone import SequenceBackbone, SequenceOutput, SequenceState
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.graphs import is_capturing
from edifice_ssm._hybrid_mamba import MixtureOfMambaMixer, ModalityLinear, positions_from_mask, run_layers
from edifice_ssm.configs.mixture_of_mamba import MixtureOfMambaConfig
from edifice_ssm.mamba import MambaState, reset_ends

__all__ = ["MixtureOfMamba", "MixtureOfMambaLayer", "MixtureOfMambaMixer", "ModalityLinear"]


class MixtureOfMambaLayer(nn.Module):
    """``h + MixtureOfMamba(RMSNorm(h), modality)``: a pre-norm residual block around the modality-aware mixer."""

    def __init__(self, config: MixtureOfMambaConfig) -> None:
        super().__init__()
        c = config
        self.mixer_norm = get_norm("rmsnorm", c.d_model, eps=c.norm_eps)
        self.mixer = MixtureOfMambaMixer(
            c.d_model,
            n_modalities=c.n_modalities,
            split=c.split_projections,
            d_state=c.d_state,
            expand=c.expand,
            d_conv=c.d_conv,
            dt_rank=c.time_step_rank,
            conv_bias=c.conv_bias,
            bias=c.bias,
            dt_min=c.dt_min,
            dt_max=c.dt_max,
            dt_init_floor=c.dt_init_floor,
            dt_scale=c.dt_scale,
            dt_init=c.dt_init,
            scan=c.scan,
        )
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self,
        h: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MambaState | None = None,
        modality: Tensor | None = None,
    ) -> Tensor:
        """``h [B, T, d_model]``, ``modality [B, T]`` -> ``[B, T, d_model]``; ``state`` updated in place."""
        out: Tensor = self.mixer(self.mixer_norm(h), modality=modality, mask=mask, state=state)
        y: Tensor = h + self.dropout(out)
        return y

    def init_state(self, batch_size: int, **kwargs: object) -> MambaState:
        """The mixer's constant-size conv and SSM state."""
        return self.mixer.init_state(batch_size, **kwargs)  # type: ignore[arg-type]


class MixtureOfMamba(SequenceBackbone):
    """Mixture-of-Mamba: ``n_layers`` modality-aware Mamba blocks; ``modality_mask [B, T]`` routes every token."""

    config_class: ClassVar[type[ArchConfig]] = MixtureOfMambaConfig
    config: MixtureOfMambaConfig

    def __init__(self, config: MixtureOfMambaConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """A modality-aware Mamba block."""
        return MixtureOfMambaLayer(self.config)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's init per modality, out_proj scaled by ``1/sqrt(n_layers)``, embeddings N(0, init_std)."""
        for layer in self.layers:
            assert isinstance(layer, MixtureOfMambaLayer)
            layer.mixer_norm.reset_parameters()  # type: ignore[operator]
            layer.mixer.reset_parameters()
            layer.mixer.out_proj.weight.div_(math.sqrt(self.config.n_layers))
        reset_ends(self)

    def forward(
        self,
        x: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        modality_mask: Tensor | None = None,
    ) -> Tensor | SequenceOutput:
        """Run on ``x [B, T, d_in]`` or ``input_ids [B, T]`` with ``modality_mask [B, T]`` (ints in ``[0, M)``)."""
        self.check_inputs(x=x, input_ids=input_ids, attention_mask=attention_mask, modality_mask=modality_mask)
        inputs = input_ids if self.embed_tokens is not None else x
        assert inputs is not None
        positions = None if attention_mask is None else positions_from_mask(attention_mask)  # (B, T)
        h = self.embed_dropout(self.embed_positions(self.embed_inputs(inputs), positions))
        h, _ = run_layers(self, h, mask=attention_mask, positions=positions, modality=modality_mask)
        return self._output(self.pool(self.norm(h), attention_mask), None)

    def step(
        self,
        x: Tensor,
        state: SequenceState,
        *,
        attention_mask: Tensor | None = None,
        modality_mask: Tensor | None = None,
    ) -> tuple[Tensor | SequenceOutput, SequenceState]:
        """Advance by ``t >= 1`` positions; ``modality_mask [B, t]`` gives the new tokens' modalities (required)."""
        if not is_capturing():
            self.check_inputs(
                **{self.primary_input: x, "attention_mask": attention_mask, "modality_mask": modality_mask}
            )
        if attention_mask is None:
            positions = state.position[:, None] + torch.arange(x.shape[1], device=state.position.device)  # (B, t)
            state.position.add_(x.shape[1])
        else:
            positions = state.position[:, None] + positions_from_mask(attention_mask)  # (B, t)
            state.position.add_(attention_mask.sum(dim=-1))
        h = self.embed_dropout(self.embed_positions(self.embed_inputs(x), positions))
        h, _ = run_layers(
            self, h, mask=attention_mask, positions=positions, states=state.layers, modality=modality_mask
        )
        return self._output(self.norm(h), None), state
