"""The residual block every sequence family stacks: a token mixer, optional cross-attention and a feed-forward.

Pre-norm (Xiong et al. 2020, https://arxiv.org/abs/2002.04745, the GPT-2/Llama layout)::

    h = x + Dropout(Mixer(Norm(x)))
    h = h + Dropout(CrossAttention(Norm(h), context))  # optional
    y = h + Dropout(FFN(Norm(h)))

Post-norm (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762, §3.1 and §5.4: ``LayerNorm(x + Sublayer(x))``, with
dropout on each sub-layer's output before the residual sum)::

    h = Norm(x + Dropout(Mixer(x)))  ...  y = Norm(h + Dropout(FFN(h)))

The mixer is any module following the sequence-mixer protocol -- ``mixer(x, *, mask, positions, state) -> y`` and
``mixer.init_state(batch_size, *, max_len, device, dtype)`` -- such as :class:`~edifice.blocks.attention.Attention`
or an SSM mixer, so the SSM and recurrent families reuse this block. The FFN is any module ``[.., d] -> [.., d]``,
or one returning ``(y, aux_loss)`` such as :class:`~edifice.blocks.moe.MoEFeedForward`, whose loss the block returns.
``ffn=None`` gives a mixer-only block (Mamba).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from edifice.blocks.attention import CrossAttention
from edifice.blocks.moe import MoEFeedForward
from edifice.blocks.norms import get_norm
from edifice.initialization import reset_submodules

__all__ = ["TransformerBlock"]


class TransformerBlock(nn.Module):
    """``mixer`` -> optional ``cross_attn`` -> optional ``ffn``, each a pre- or post-normed residual sub-layer."""

    def __init__(
        self,
        d_model: int,
        mixer: nn.Module,
        ffn: nn.Module | None = None,
        *,
        cross_attn: CrossAttention | None = None,
        norm: str = "rmsnorm",
        norm_eps: float = 1e-6,
        norm_position: str = "pre",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ValueError(f"TransformerBlock: norm_position must be 'pre' or 'post', got {norm_position!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TransformerBlock: dropout must lie in [0, 1), got {dropout}")
        self.d_model = d_model
        self.pre_norm = norm_position == "pre"
        self.mixer_norm = get_norm(norm, d_model, eps=norm_eps)
        self.mixer = mixer
        self.cross_norm = get_norm(norm, d_model, eps=norm_eps) if cross_attn is not None else None
        self.cross_attn = cross_attn
        self.ffn_norm = get_norm(norm, d_model, eps=norm_eps) if ffn is not None else None
        self.ffn = ffn
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        """Reset the norms and every sub-layer (each through its own ``reset_parameters``)."""
        reset_submodules(self)

    def _input(self, x: Tensor, norm: nn.Module) -> Tensor:
        """What a sub-layer reads: ``Norm(x)`` (pre-norm) or ``x`` (post-norm)."""
        return norm(x) if self.pre_norm else x

    def _output(self, x: Tensor, out: Tensor, norm: nn.Module) -> Tensor:
        """The residual sum: ``x + Dropout(out)`` (pre-norm) or ``Norm(x + Dropout(out))`` (post-norm)."""
        y = x + self.dropout(out)
        return y if self.pre_norm else norm(y)  # type: ignore[no-any-return]

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: Any = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        **mixer_kwargs: Any,
    ) -> tuple[Tensor, Tensor | None]:
        """``x [B, T, d_model]`` -> ``(y, aux_loss or None)``; ``state`` is the mixer's, updated in place.

        ``mask``/``positions``/``state`` and any further keywords (a mixer's own, e.g. keys shared across layers) go
        to the mixer; ``context [B, S, d_context]`` and ``context_mask [B, S]`` to the cross-attention (required when
        the block has one).
        """
        out = self.mixer(self._input(x, self.mixer_norm), mask=mask, positions=positions, state=state, **mixer_kwargs)
        x = self._output(x, out, self.mixer_norm)
        if self.cross_attn is not None and self.cross_norm is not None:
            if context is None:
                raise ValueError("TransformerBlock: this block has cross-attention and needs context [B, S, d_context]")
            out = self.cross_attn(self._input(x, self.cross_norm), context, context_mask=context_mask)
            x = self._output(x, out, self.cross_norm)
        aux: Tensor | None = None
        if self.ffn is not None and self.ffn_norm is not None:
            h = self._input(x, self.ffn_norm)
            # A mixture of experts keeps padding out of its load-balancing statistics.
            out = self.ffn(h, mask) if isinstance(self.ffn, MoEFeedForward) else self.ffn(h)
            if isinstance(out, tuple):  # a mixture of experts returns (y, its weighted load-balancing loss)
                out, aux = out
            x = self._output(x, out, self.ffn_norm)
        return x, aux

    def init_state(self, batch_size: int, **kwargs: Any) -> Any:
        """The mixer's decoding state (``max_len``, ``device`` and ``dtype`` keywords pass through)."""
        init = getattr(self.mixer, "init_state", None)
        if init is None:
            raise TypeError(f"TransformerBlock: mixer {type(self.mixer).__name__} has no init_state (it cannot step)")
        return init(batch_size, **kwargs)
