"""``min_gru`` and ``min_lstm``: RNNs whose gates read only ``x_t``, so training is a parallel scan.

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, 2024, "Were RNNs All We Needed?", https://arxiv.org/abs/2410.01201.
Dropping ``h_{t-1}`` from the gates and the candidate's range restriction turns a GRU/LSTM into the positive linear
recurrence ``h_t = a_t ⊙ h_{t-1} + b_t``, trained with Heinsen's log-space scan (:func:`edifice.ops.log_scan`) and
stepped as the RNN it is. With ``g(x) = x + 1/2 (x >= 0), σ(x) (x < 0)`` keeping the candidate positive (the paper's
log-space appendix) and ``log g(x) = log(x + 1/2) (x >= 0), -softplus(-x) (x < 0)``:

minGRU (§3.1.3)::

    z_t = σ(Linear_z(x_t))      h̃_t = g(Linear_h(x_t))      h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t
    log a_t = -softplus(k_t)    log b_t = -softplus(-k_t) + log g(Linear_h(x_t))      (k_t = Linear_z(x_t))

minLSTM (§3.2.3), with the gates normalised so the state's scale does not depend on time::

    f_t = σ(Linear_f(x_t))   i_t = σ(Linear_i(x_t))   f'_t, i'_t = f_t, i_t / (f_t + i_t)
    h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t
    d_t = softplus(-k^f_t) - softplus(-k^i_t)   log f'_t = -softplus(d_t)   log i'_t = -softplus(-d_t)

Each layer is a pre-norm residual block (the paper's language-model setup, after nanoGPT):
``x + Mixer(Norm(x))`` then ``+ MLP(Norm(.))`` (``d_ff=0`` drops it). ``expand > 1`` widens the state to
``expand * d_model`` with a down projection (the paper's expansion factor). ``h_0 = 0``.

Deviations: none in the recurrence. ``forward`` is the parallel (log-space) mode, ``step`` the sequential mode in
linear space (the paper's Algorithms for sequential and parallel minGRU/minLSTM); they agree to fp32 rounding. Padding
makes a pad step the identity (``a = 1``, ``b = 0``), so valid positions see exactly the unpadded sequence.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import get_ffn
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.outputs import model_output
from edifice_recurrent.configs.min_rnn import MIN_CELL_TYPES, MinRNNConfig

__all__ = ["MinRNN", "MinRNNMixer", "MinRNNState", "g", "log_g"]

#: ``log 0`` for padded steps: exp() of it is exactly 0 and it stays finite, so no gradient becomes NaN.
_LOG_ZERO = -1e30


def g(x: Tensor) -> Tensor:
    """The paper's positive activation for the candidate state: ``x + 1/2`` for ``x >= 0``, ``σ(x)`` below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """``log g(x)`` computed stably: ``log(x + 1/2)`` for ``x >= 0``, ``-softplus(-x)`` below."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


@model_output
class MinRNNState:
    """Decoding state of one minGRU/minLSTM layer, updated in place by ``step``."""

    h: Tensor
    """Hidden state ``[B, expand * d_model]`` (positive, in linear space)."""


class MinRNNMixer(nn.Module):
    """minGRU or minLSTM token mixer ``[B, T, d_model] -> [B, T, d_model]`` (the sequence-mixer protocol)."""

    def __init__(self, cell_type: str, d_model: int, d_inner: int, *, bias: bool = True) -> None:
        super().__init__()
        if cell_type not in MIN_CELL_TYPES:
            raise ValueError(f"MinRNNMixer: cell_type must be one of {', '.join(MIN_CELL_TYPES)}, got {cell_type!r}")
        self.cell_type = cell_type
        self.d_inner = d_inner
        n_gates = 1 if cell_type == "min_gru" else 2  # z; or f and i
        # One projection for the gate pre-activations and the candidate: [k_z | h̃] or [k_f | k_i | h̃].
        self.in_proj = nn.Linear(d_model, (n_gates + 1) * d_inner, bias=bias)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False) if d_inner != d_model else nn.Identity()

    def reset_parameters(self) -> None:
        """PyTorch's default Linear init, as the paper's reference code uses."""
        self.in_proj.reset_parameters()
        if isinstance(self.out_proj, nn.Linear):
            self.out_proj.reset_parameters()

    def _split(self, x: Tensor) -> tuple[Tensor, ...]:
        """Gate pre-activations and candidate pre-activation, each ``[B, T, d_inner]``."""
        return self.in_proj(x).split(self.d_inner, dim=-1)  # type: ignore[no-any-return]

    def log_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log a, log b)`` of ``h_t = a_t h_{t-1} + b_t`` for ``x [B, T, d_model]``, in fp32 (log-space form)."""
        *gates, cand = (t.float() for t in self._split(x))
        if self.cell_type == "min_gru":
            (k,) = gates
            log_a, log_z = -F.softplus(k), -F.softplus(-k)  # log(1 - z), log z
        else:
            k_f, k_i = gates
            diff = F.softplus(-k_f) - F.softplus(-k_i)  # log i - log f
            log_a, log_z = -F.softplus(diff), -F.softplus(-diff)  # log f', log i'
        return log_a, log_z + log_g(cand)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``: the parallel scan, or the sequential form when stepping."""
        if state is not None:
            h = self._sequential(x, state, mask)
        else:
            log_a, log_b = self.log_coefficients(x)  # (B, T, d_inner)
            if mask is not None:  # a pad step is the identity: a = 1, b = 0
                keep = mask.unsqueeze(-1)
                log_a, log_b = log_a.masked_fill(~keep, 0.0), log_b.masked_fill(~keep, _LOG_ZERO)
            h = ops.log_scan(log_a, log_b).exp()  # (B, T, d_inner), from h_0 = 0
        return self.out_proj(h.to(x.dtype))  # type: ignore[no-any-return]

    def _sequential(self, x: Tensor, state: MinRNNState, mask: Tensor | None) -> Tensor:
        """The sequential mode in linear space over the ``t`` positions of ``x``; advances ``state`` in place."""
        *gates, cand = (t.float() for t in self._split(x))
        h_tilde = g(cand)  # (B, t, d_inner)
        if self.cell_type == "min_gru":
            z = torch.sigmoid(gates[0])
            a, b = 1 - z, z * h_tilde
        else:
            f, i = torch.sigmoid(gates[0]), torch.sigmoid(gates[1])
            a, b = f / (f + i), i / (f + i) * h_tilde
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
    ) -> MinRNNState:
        """``h_0 = 0``, constant size whatever ``max_len``; kept in fp32 (scan states compute in fp32)."""
        return MinRNNState(h=torch.zeros(batch_size, self.d_inner, device=device, dtype=torch.float32))


class MinRNN(SequenceBackbone):
    """``min_gru``/``min_lstm``: pre-norm residual blocks of a minimal-RNN mixer and an optional MLP."""

    config_class: ClassVar[type[edifice.ArchConfig]] = MinRNNConfig
    config: MinRNNConfig

    def __init__(self, config: MinRNNConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Block ``index``: ``x + Mixer(Norm(x))``, then ``+ MLP(Norm(.))`` unless ``d_ff == 0``."""
        c = self.config
        mixer = MinRNNMixer(c.cell_type, c.d_model, c.d_inner, bias=c.bias)
        ffn = get_ffn("mlp", c.d_model, c.ffn_hidden, activation="gelu", dropout=c.dropout) if c.ffn_hidden else None
        return TransformerBlock(c.d_model, mixer, ffn, norm=c.norm, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final norm, of the same kind as the blocks'."""
        return get_norm(self.config.norm, self.config.d_model)
