"""BiMamba: bidirectional Mamba, the block of Vision Mamba (Vim) -- a forward and a backward selective scan per layer.

Each layer is a pre-norm residual block whose mixer runs two Mamba mixers (:class:`~edifice_ssm.mamba.MambaMixer`,
Gu & Dao 2023, Fig. 3): one over the sequence as given, one over the sequence reversed, whose output is reversed back,
so that position ``t`` sees the past through the first and the future through the second. In Vim's block the two
directions share the input projection (``x`` and the gate ``z``) and the output projection, and have their own
convolution, ``Δ``/``B``/``C`` projections, ``A`` and ``D``; the two gated outputs are summed before the output
projection. Not causal and not stateful.

Paper: Lianghui Zhu, Bencheng Liao, Qian Zhang, Xinlong Wang, Wenyu Liu, Xinggang Wang, "Vision Mamba: Efficient
Visual Representation Learning with Bidirectional State Space Model", ICML 2024, https://arxiv.org/abs/2401.09417
(§3.3 and Algorithm 1, the Vim block), on Albert Gu and Tri Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", 2023, https://arxiv.org/abs/2312.00752.

Algorithm 1, with ``rev`` the reversal of the sequence::

    T' = Norm(T_{l-1});   x = W_x T';   z = W_z T'                             (shared in_proj)
    y_fwd = SSM_fwd(SiLU(Conv_fwd(x)))                                         (Mamba's selective scan, eqs. 2a-2b, 4)
    y_bwd = rev(SSM_bwd(SiLU(Conv_bwd(rev(x)))))
    T_l   = W_T (y_fwd ⊙ SiLU(z) + y_bwd ⊙ SiLU(z)) + T_{l-1}                   (shared out_proj; combine="sum")

Because ``W_T`` is linear and bias-free, ``W_T(a + b) = W_T a + W_T b``: the layer is exactly
``MambaMixer_fwd(T') + rev(MambaMixer_bwd(rev(T')))`` with the two mixers' ``in_proj`` and ``out_proj`` tied, which is
how it is built here (``share_projections=True``; ``False`` gives two independent mixers). ``combine="mean"`` halves
the sum (Vim's released code, ``if_divide_out``); ``"concat"`` projects ``[out_fwd ; out_bwd]`` with a ``2d -> d``
linear.

Padding (``attention_mask``): the backward direction must read each row's *valid* tokens in reverse, so ``rev`` is
a per-row permutation that reverses the order of the valid positions and leaves the padded ones in place (a
right-padded row ``a b c _ _`` becomes ``c b a _ _``, never ``_ _ c b a``); each mixer zeroes padded inputs and sets
``Δ = 0`` there, so a padded batch gives every row its unpadded result.

``chunk_size`` evaluates each direction in chunks of that many positions, carrying the mixer's convolution and SSM
state from chunk to chunk (the forward direction left to right, the backward one over the reversed sequence): the same
result with activation memory bounded by the chunk (useful for long sequences at inference).

Initialisation: Mamba's per direction (S4D-real ``A``, log-uniform ``Δ``, ``D = 1``), out projections divided by
``sqrt(n_layers)`` once (a shared one is not divided twice), embeddings ``N(0, init_std²)``.

Deviation: the shared input projection is applied to the sequence and to its reversal (twice as many FLOPs in
``in_proj`` as computing it once and reversing), which keeps each direction an unmodified ``MambaMixer``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.backbone import SequenceBackbone, SequenceState
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice_ssm.configs.bimamba import COMBINES, BiMambaConfig
from edifice_ssm.mamba import MambaMixer, reset_ends

__all__ = ["BiMamba", "BiMambaMixer", "reverse_valid"]


def reverse_valid(mask: Tensor) -> Tensor:
    """``[B, T]`` int64 index that reverses the order of each row's valid positions and keeps padded ones in place.

    ``mask [B, T]`` is True at valid positions. ``x.gather(1, idx)`` (index broadcast over features) reverses every
    row's valid tokens among the valid positions; the permutation is its own inverse.
    """
    B, T = mask.shape
    order = torch.argsort((~mask).to(torch.int32), dim=1, stable=True)  # (B, T): valid positions first, in order
    n_valid = mask.sum(dim=1, keepdim=True)  # (B, 1)
    rank = torch.arange(T, device=mask.device).expand(B, T)
    source = torch.where(rank < n_valid, n_valid - 1 - rank, rank)  # valid rank i <- rank n - 1 - i
    return torch.empty_like(order).scatter_(1, order, order.gather(1, source))


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x [B, T, C]`` permuted along time by ``index [B, T]``."""
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class BiMambaMixer(nn.Module):
    """Vim's bidirectional mixer: ``[B, T, d_model] -> [B, T, d_model]``, two Mamba scans (not causal, no state)."""

    def __init__(self, config: BiMambaConfig) -> None:
        super().__init__()
        if config.combine not in COMBINES:
            raise ValueError(f"BiMambaMixer: combine must be one of {COMBINES}, got {config.combine!r}")
        self.combine, self.chunk_size = config.combine, config.chunk_size
        self.forward_mixer = MambaMixer.from_config(config)
        self.backward_mixer = MambaMixer.from_config(config)
        if config.share_projections:  # Vim: one in_proj (x, z) and one out_proj for both directions
            self.backward_mixer.in_proj = self.forward_mixer.in_proj
            self.backward_mixer.out_proj = self.forward_mixer.out_proj
        d = config.d_model
        self.combine_proj = nn.Linear(2 * d, d, bias=False) if config.combine == "concat" else None

    def reset_parameters(self) -> None:
        """Mamba's initialisation for each direction; default Linear init for the concat projection."""
        self.forward_mixer.reset_parameters()
        self.backward_mixer.reset_parameters()
        if self.combine_proj is not None:
            self.combine_proj.reset_parameters()

    def _scan(self, mixer: MambaMixer, x: Tensor, mask: Tensor | None) -> Tensor:
        """One direction over ``x [B, T, d]``: at once, or chunk by chunk carrying the mixer's state."""
        T = x.shape[1]
        if self.chunk_size is None or self.chunk_size >= T:
            return mixer(x, mask=mask)  # type: ignore[no-any-return]
        state = mixer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        pieces = []
        for start in range(0, T, self.chunk_size):
            stop = min(start + self.chunk_size, T)
            chunk_mask = None if mask is None else mask[:, start:stop]
            pieces.append(mixer(x[:, start:stop], mask=chunk_mask, state=state))
        return torch.cat(pieces, dim=1)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d]`` -> ``[B, T, d]``: forward scan + reversed backward scan; ``mask [B, T]`` (True = valid)."""
        if state is not None:
            raise TypeError("BiMambaMixer is bidirectional: it has no decoding state and cannot step")
        y_fwd = self._scan(self.forward_mixer, x, mask)  # (B, T, d)
        if mask is None:
            y_bwd = self._scan(self.backward_mixer, x.flip(1), None).flip(1)
        else:
            index = reverse_valid(mask)  # (B, T), an involution
            y_bwd = _gather_time(self._scan(self.backward_mixer, _gather_time(x, index), mask), index)
        if self.combine_proj is not None:
            return self.combine_proj(torch.cat([y_fwd, y_bwd], dim=-1))  # type: ignore[no-any-return]
        y = y_fwd + y_bwd  # = out_proj(y'_fwd + y'_bwd) with a shared, bias-free out_proj (Algorithm 1)
        return 0.5 * y if self.combine == "mean" else y


class BiMamba(SequenceBackbone):
    """BiMamba sequence model: ``n_layers`` pre-norm residual :class:`BiMambaMixer` blocks and a final RMSNorm."""

    config_class: ClassVar[type[ArchConfig]] = BiMambaConfig
    config: BiMambaConfig

    def __init__(self, config: BiMambaConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """A mixer-only pre-norm residual block: ``h + BiMixer(RMSNorm(h))``."""
        c = self.config
        return TransformerBlock(
            c.d_model, BiMambaMixer(c), None, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout
        )

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each layer's init; each distinct ``out_proj`` divided by ``sqrt(n_layers)``; embeddings N(0, init_std²)."""
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.mixer, BiMambaMixer)
            layer.reset_parameters()
            projections = {id(m.out_proj): m.out_proj for m in (layer.mixer.forward_mixer, layer.mixer.backward_mixer)}
            for out_proj in projections.values():
                out_proj.weight.div_(math.sqrt(self.config.n_layers))
        reset_ends(self)

    def init_state(self, batch_size: int, **kwargs: Any) -> SequenceState:
        """Not available: BiMamba is bidirectional, so it has no left-to-right decoding state."""
        raise TypeError(
            "bimamba is bidirectional (not causal): it has no decoding state; call it on the whole sequence "
            "(config.chunk_size bounds the activation memory)"
        )

    def step(self, x: Tensor, state: SequenceState, *, attention_mask: Tensor | None = None) -> Any:
        """Not available: BiMamba is bidirectional and cannot decode position by position."""
        raise TypeError("bimamba is bidirectional (not causal): it cannot step; call it on the whole sequence")
