"""``native_recurrence``: one residual stack for six minimal gated linear recurrences, picked by ``recurrence_type``.

An Edifice-original design whose equations are fixed in docs/design/native_recurrence.md (there is no paper). Every
type is the first-order linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` (``h_0 = 0``) with ``(a_t, b_t)`` computed
from ``x_t`` alone, so ``forward`` is a parallel scan and ``step`` the RNN it is:

* ``min_gru`` / ``min_lstm`` -- Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We Needed?", 2024,
  https://arxiv.org/abs/2410.01201, §3.1.3 and §3.2.3 (the mixer of :mod:`edifice_recurrent.min_rnn`, reused);
* ``elu_gru`` -- ``z = σ(k)``, ``c = 1 + ELU(v)``, ``a = 1 - z``, ``b = z ⊙ c`` (the positive feature map of
  Katharopoulos et al. 2020, arXiv:2006.16236, eq. 7, as a GRU candidate); log space is exact,
  ``log c = v (v <= 0), log(1 + v) (v > 0)``;
* ``real_gru`` -- ``z = σ(k)``, ``a = 1 - z``, ``b = z ⊙ v`` (a real, signed candidate);
* ``diag_linear`` -- ``a = σ(k)``, ``b = v``;
* ``rg_lru`` -- De et al., "Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient Language
  Models", 2024, https://arxiv.org/abs/2402.19427, §2.4 eqs. 1-4: ``r = σ(k_1)``, ``i = σ(k_2)``,
  ``a_t = σ(Λ)^(c r_t)`` (``c = 8``), ``b_t = sqrt(1 - a_t²) ⊙ (i_t ⊙ v_t)``, ``Λ`` initialised so that
  ``σ(Λ)^c ~ U[0.9, 0.999]``.

The positive types train with Heinsen's log-space scan (:func:`edifice.ops.log_scan`), the signed ones with the
linear scan (:func:`edifice.ops.linear_recurrence`). Blocks are pre-norm residual, ``x + W_out h(Norm(x))`` (``W_out``
when ``expand > 1``), with an optional GeLU MLP (``d_ff > 0``) and a final norm.

Deviations (design choices, see the design note): for ``rg_lru`` the gate projections are dense rather than
block-diagonal, the recurrence input is the mixer's own projection (Griffin's block adds a linear branch and a causal
convolution around the RG-LRU), and ``sqrt(1 - a²)`` is evaluated as ``sqrt(max(-expm1(2 log a), 1e-12))`` so its
derivative stays bounded as ``a -> 1``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import get_ffn
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_recurrent.configs.native_recurrence import LOG_SPACE_TYPES, NativeRecurrenceConfig
from edifice_recurrent.min_rnn import MinRNNMixer

__all__ = ["NativeRecurrence", "NativeRecurrenceMixer", "NativeRecurrenceState", "log_one_plus_elu"]

#: ``log 0`` for padded steps: exp() of it is exactly 0 and it stays finite, so no gradient becomes NaN.
_LOG_ZERO = -1e30
#: The types this module's own mixer implements (minGRU/minLSTM reuse :class:`MinRNNMixer`).
_OWN_TYPES = ("elu_gru", "real_gru", "diag_linear", "rg_lru")


def log_one_plus_elu(v: Tensor) -> Tensor:
    """``log(1 + ELU(v))``, exactly and stably: ``v`` for ``v <= 0`` and ``log(1 + v)`` above."""
    return torch.where(v > 0, torch.log1p(F.relu(v)), v)


@model_output
class NativeRecurrenceState:
    """Decoding state of one layer, updated in place by ``step``."""

    h: Tensor
    """Hidden state ``[B, expand * d_model]`` in fp32."""


class NativeRecurrenceMixer(nn.Module):
    """The ``elu_gru``/``real_gru``/``diag_linear``/``rg_lru`` token mixer ``[B, T, d_model] -> [B, T, d_model]``."""

    def __init__(
        self, recurrence_type: str, d_model: int, d_inner: int, *, bias: bool = True, rg_lru_c: float = 8.0
    ) -> None:
        super().__init__()
        if recurrence_type not in _OWN_TYPES:
            raise ValueError(
                f"NativeRecurrenceMixer: recurrence_type must be one of {', '.join(_OWN_TYPES)} "
                f"(min_gru/min_lstm use MinRNNMixer), got {recurrence_type!r}"
            )
        self.recurrence_type = recurrence_type
        self.d_inner = d_inner
        self.rg_lru_c = rg_lru_c
        n_gates = 2 if recurrence_type == "rg_lru" else 1
        # One projection for the gate pre-activations and the candidate: [k | v] or [k_1 | k_2 | v].
        self.in_proj = nn.Linear(d_model, (n_gates + 1) * d_inner, bias=bias)
        # RG-LRU's Λ: a = σ(Λ) is the decay at r = 1/c (Griffin eq. 3).
        self.log_a_param = nn.Parameter(torch.empty(d_inner)) if recurrence_type == "rg_lru" else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=False) if d_inner != d_model else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default Linear init; RG-LRU's Λ so that ``σ(Λ)^c ~ U[0.9, 0.999]`` (Griffin §2.4)."""
        self.in_proj.reset_parameters()
        if isinstance(self.out_proj, nn.Linear):
            self.out_proj.reset_parameters()
        if self.log_a_param is not None:
            with torch.no_grad():
                a_c = torch.empty_like(self.log_a_param).uniform_(0.9, 0.999)  # a^c
                a = a_c ** (1.0 / self.rg_lru_c)
                self.log_a_param.copy_(torch.log(a) - torch.log1p(-a))  # Λ = logit(a)

    @property
    def log_space(self) -> bool:
        """Whether ``a_t, b_t > 0`` (trained with the log-space scan) rather than signed ``b_t``."""
        return self.recurrence_type in LOG_SPACE_TYPES

    def _split(self, x: Tensor) -> tuple[Tensor, ...]:
        """Gate pre-activations and the candidate pre-activation ``v``, each ``[B, T, d_inner]`` in fp32."""
        return tuple(t.float() for t in self.in_proj(x).split(self.d_inner, dim=-1))

    def log_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log a, log b)`` of the positive ``elu_gru`` recurrence, fp32 ``[B, T, d_inner]`` each."""
        k, v = self._split(x)
        return -F.softplus(k), -F.softplus(-k) + log_one_plus_elu(v)  # log(1 - z), log z + log c

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of ``h_t = a_t h_{t-1} + b_t`` in linear space, fp32 ``[B, T, d_inner]`` each."""
        *gates, v = self._split(x)
        kind = self.recurrence_type
        if kind == "rg_lru":
            assert self.log_a_param is not None
            r, i = torch.sigmoid(gates[0]), torch.sigmoid(gates[1])  # eqs. 1-2
            log_a = -self.rg_lru_c * r * F.softplus(-self.log_a_param.float())  # log σ(Λ)^(c r), eq. 3
            multiplier = torch.sqrt(torch.clamp_min(-torch.expm1(2.0 * log_a), 1e-12))  # sqrt(1 - a²)
            return log_a.exp(), multiplier * (i * v)  # eq. 4
        if kind == "diag_linear":
            return torch.sigmoid(gates[0]), v
        z = torch.sigmoid(gates[0])
        candidate = F.elu(v) + 1.0 if kind == "elu_gru" else v
        return 1.0 - z, z * candidate

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``: the parallel scan, or the sequential form when stepping."""
        if state is not None:
            h = self._sequential(x, state, mask)
        elif self.log_space:
            log_a, log_b = self.log_coefficients(x)  # (B, T, D)
            if mask is not None:  # a pad step is the identity: a = 1, b = 0
                keep = mask.unsqueeze(-1)
                log_a, log_b = log_a.masked_fill(~keep, 0.0), log_b.masked_fill(~keep, _LOG_ZERO)
            h = ops.log_scan(log_a, log_b).exp()  # (B, T, D), from h_0 = 0
        else:
            a, b = self.coefficients(x)  # (B, T, D)
            if mask is not None:
                keep = mask.unsqueeze(-1)
                a, b = a.masked_fill(~keep, 1.0), b.masked_fill(~keep, 0.0)
            h = ops.linear_recurrence(a, b)  # (B, T, D), from h_0 = 0
        return self.out_proj(h.to(x.dtype))  # type: ignore[no-any-return]

    def _sequential(self, x: Tensor, state: NativeRecurrenceState, mask: Tensor | None) -> Tensor:
        """The sequential mode in linear space over the ``t`` positions of ``x``; advances ``state`` in place."""
        a, b = self.coefficients(x)  # (B, t, D)
        h = state.h.to(torch.float32, copy=True)  # a copy: state.h is overwritten below, h may be in the graph
        outs = []
        for t in range(x.shape[1]):
            new = a[:, t] * h + b[:, t]
            h = new if mask is None else torch.where(mask[:, t, None], new, h)
            outs.append(h)
        state.h.copy_(h)
        return torch.stack(outs, 1)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> NativeRecurrenceState:
        """``h_0 = 0`` in fp32, constant size whatever ``max_len``."""
        device = self.in_proj.weight.device if device is None else device
        return NativeRecurrenceState(h=torch.zeros(batch_size, self.d_inner, device=device, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"recurrence_type={self.recurrence_type!r}, d_inner={self.d_inner}"


class NativeRecurrence(SequenceBackbone):
    """Pre-norm residual blocks of a minimal linear recurrence (``recurrence_type``), optional MLP, final norm."""

    config_class: ClassVar[type[ArchConfig]] = NativeRecurrenceConfig
    config: NativeRecurrenceConfig

    def __init__(self, config: NativeRecurrenceConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Block ``index``: ``x + Mixer(Norm(x))``, then ``+ MLP(Norm(.))`` when ``d_ff > 0``."""
        c = self.config
        mixer: nn.Module
        if c.recurrence_type in ("min_gru", "min_lstm"):
            mixer = MinRNNMixer(c.recurrence_type, c.d_model, c.d_inner, bias=c.bias)
        else:
            mixer = NativeRecurrenceMixer(c.recurrence_type, c.d_model, c.d_inner, bias=c.bias, rg_lru_c=c.rg_lru_c)
        ffn = get_ffn("mlp", c.d_model, c.d_ff, activation="gelu", dropout=c.dropout) if c.d_ff else None
        return TransformerBlock(c.d_model, mixer, ffn, norm=c.norm, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final norm, of the same kind as the blocks'."""
        return get_norm(self.config.norm, self.config.d_model)
