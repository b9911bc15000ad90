"""Position-wise feed-forward networks: the two-layer MLP and the gated (GLU-family) variants.

* MLP: Vaswani et al. (2017), "Attention Is All You Need", https://arxiv.org/abs/1706.03762, eq. (2):
  ``FFN(x) = act(x W1 + b1) W2 + b2``.
* Gated: Shazeer (2020), "GLU Variants Improve Transformer", https://arxiv.org/abs/2002.05202, eqs. (5)-(6):
  ``FFN_SwiGLU(x) = (Swish(x W) ⊙ x V) W2`` (GeGLU with GELU, ReGLU with ReLU), without biases as in the paper.

Parameter names follow the Llama convention -- ``gate_proj`` (W), ``up_proj`` (V, or W1 of the MLP) and ``down_proj``
(W2) -- so checkpoints of transformers' Llama-style MLPs map one to one. Dropout acts on the hidden activations; the
residual dropout after ``down_proj`` belongs to the enclosing block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edifice._text import did_you_mean
from edifice.blocks.activations import get_activation

__all__ = ["FeedForward", "GatedFeedForward", "ffn_kinds", "get_ffn"]


def _check_sizes(name: str, d_model: int, d_hidden: int, dropout: float) -> None:
    if d_model <= 0 or d_hidden <= 0:
        raise ValueError(f"{name}: d_model and d_hidden must be > 0, got d_model={d_model}, d_hidden={d_hidden}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must lie in [0, 1), got {dropout}")


class FeedForward(nn.Module):
    """Two-layer MLP ``down_proj(dropout(act(up_proj(x))))`` (Vaswani et al. 2017, eq. 2)."""

    def __init__(
        self, d_model: int, d_hidden: int, *, activation: str = "gelu", bias: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, d_model, d_hidden, dropout)
        self.activation = activation
        self.up_proj = nn.Linear(d_model, d_hidden, bias=bias)
        self.act = get_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.down_proj = nn.Linear(d_hidden, d_model, bias=bias)

    def reset_parameters(self) -> None:
        """PyTorch's default ``nn.Linear`` initialisation; architectures apply their paper's scheme on top."""
        self.up_proj.reset_parameters()
        self.down_proj.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d_model] -> [..., d_model]``."""
        y: torch.Tensor = self.down_proj(self.dropout(self.act(self.up_proj(x))))
        return y


class GatedFeedForward(nn.Module):
    """Gated MLP ``down_proj(dropout(act(gate_proj(x)) ⊙ up_proj(x)))`` (Shazeer 2020, eqs. 5-6)."""

    def __init__(
        self, d_model: int, d_hidden: int, *, activation: str = "silu", bias: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, d_model, d_hidden, dropout)
        self.activation = activation
        self.gate_proj = nn.Linear(d_model, d_hidden, bias=bias)
        self.up_proj = nn.Linear(d_model, d_hidden, bias=bias)
        self.act = get_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.down_proj = nn.Linear(d_hidden, d_model, bias=bias)

    def reset_parameters(self) -> None:
        """PyTorch's default ``nn.Linear`` initialisation; architectures apply their paper's scheme on top."""
        for proj in (self.gate_proj, self.up_proj, self.down_proj):
            proj.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d_model] -> [..., d_model]``."""
        y: torch.Tensor = self.down_proj(self.dropout(self.act(self.gate_proj(x)) * self.up_proj(x)))
        return y


# kind -> (class, activation fixed by the kind or None when the caller may choose it)
_KINDS: dict[str, tuple[type[nn.Module], str | None]] = {
    "mlp": (FeedForward, None),
    "glu": (GatedFeedForward, None),
    "swiglu": (GatedFeedForward, "silu"),
    "geglu": (GatedFeedForward, "gelu"),
    "reglu": (GatedFeedForward, "relu"),
}


def ffn_kinds() -> list[str]:
    """The kinds :func:`get_ffn` accepts."""
    return sorted(_KINDS)


def get_ffn(kind: str, d_model: int, d_hidden: int, **kwargs: Any) -> nn.Module:
    """Build a feed-forward block by kind: ``"mlp"``, ``"glu"``, ``"swiglu"``, ``"geglu"`` or ``"reglu"``.

    ``kwargs`` (``activation``, ``bias``, ``dropout``) go to the constructor; ``"mlp"`` and ``"glu"`` take any
    activation, the named GLU variants fix theirs (Swish, GELU, ReLU).
    """
    if kind not in _KINDS:
        valid = ", ".join(ffn_kinds())
        raise ValueError(f"unknown feed-forward kind {kind!r}; valid kinds: {valid}.{did_you_mean(kind, _KINDS)}")
    cls, activation = _KINDS[kind]
    if activation is not None:
        if kwargs.get("activation", activation) != activation:
            raise ValueError(
                f"feed-forward kind {kind!r} fixes activation={activation!r}; use kind='glu' to choose "
                f"activation={kwargs['activation']!r}"
            )
        kwargs["activation"] = activation
    return cls(d_model, d_hidden, **kwargs)
