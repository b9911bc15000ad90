"""The base of every sequence model: embed, a stack of mixer layers, final norm, pooling or LM head, and decoding.

A family subclasses :class:`SequenceBackbone` and supplies its layers through :meth:`SequenceBackbone.build_layer`
(and, if it needs them, :meth:`~SequenceBackbone.build_norm` and :meth:`~SequenceBackbone.embed_positions`);
everything else is shared::

    x [B, T, d_in] --input_proj--> h [B, T, d_model]     (or input_ids [B, T] --embed_tokens--> h)
    h = embed_positions(h, positions); h = Dropout(h)
    h, aux_l = layer_l(h, mask=attention_mask, positions=positions, state=None)     for l = 1..n_layers
    h = norm(h) -> pooled by config.output ("all" | "last" | "mean") -> lm_head when vocab_size is set

A layer is any module with ``layer(h, *, mask, positions, state) -> (h, aux_loss or None)`` (a bare tensor is also
accepted) and ``layer.init_state(batch_size, *, max_len, device, dtype)``; :class:`~edifice.blocks.transformer.
TransformerBlock` around an attention or SSM mixer is the usual one. Layer states are updated in place.
:meth:`~SequenceBackbone.layer_inputs` gives each layer further keywords computed once per call from the whole
stack's parameters (HGRN's lower bounds, a softmax over the layers).

Padding: ``attention_mask [B, T]`` (True = valid) gives each position its index among the valid ones,
``positions = cumsum(mask) - 1``, so a left- or right-padded sequence is computed exactly like the unpadded one
(pads before the first token get position -1 and attend to nothing).

Decoding (conventions.md, "Stateful entries"): :meth:`~SequenceBackbone.init_state` returns a :class:`SequenceState`;
:meth:`~SequenceBackbone.step` takes ``t >= 1`` new positions of the primary input (a prompt is the prefill, one
position a decode step) and returns what ``forward`` returns at those positions with ``output="all"``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.graphs import is_capturing
from edifice.model import Model
from edifice.outputs import model_output
from edifice.sequence import SequenceConfig

__all__ = ["SequenceBackbone", "SequenceOutput", "SequenceState"]


@model_output
class SequenceState:
    """Decoding state of a :class:`SequenceBackbone`: one state per layer and the next position of every row."""

    layers: list[Any]
    """Per-layer mixer states (a KV cache for attention, a recurrent state for SSMs), updated in place by ``step``."""
    position: Tensor
    """``[B]`` int64: the absolute position the next valid token of each sequence gets."""


@model_output
class SequenceOutput:
    """Output of a backbone whose layers return auxiliary losses (e.g. a mixture of experts)."""

    hidden: Tensor | None = None
    """Final hidden states ``[B, T?, d_model]`` when there is no LM head (``vocab_size`` is None)."""
    logits: Tensor | None = None
    """Logits ``[B, T?, vocab_size]`` when ``vocab_size`` is set."""
    aux_loss: Tensor | None = None
    """Sum of the layers' auxiliary losses, already weighted (a scalar)."""


class SequenceBackbone(Model):
    """Embedding, ``n_layers`` layers from :meth:`build_layer`, final norm, pooling, optional (tied) LM head.

    Subclasses implement :meth:`build_layer` and end their ``__init__`` with ``self.reset_parameters()`` (their own
    attributes exist only after ``super().__init__``, which builds the layers).
    """

    config_class: ClassVar[type[ArchConfig]] = SequenceConfig
    config: SequenceConfig
    #: Whether ``forward`` returns a :class:`SequenceOutput` with ``aux_loss`` (subclasses whose layers have one).
    returns_aux_loss: bool = False

    def __init__(self, config: SequenceConfig) -> None:
        super().__init__(config)
        d_model = config.d_model
        self.embed_tokens = nn.Embedding(config.vocab_size, d_model) if config.vocab_size is not None else None
        self.input_proj: nn.Module | None = None
        if config.vocab_size is None:
            self.input_proj = nn.Linear(config.d_in, d_model) if config.d_in is not None else nn.Identity()
        self.embed_dropout: nn.Module = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([self.build_layer(i) for i in range(config.n_layers)])
        self.norm = self.build_norm()
        self.lm_head = nn.Linear(d_model, config.vocab_size, bias=False) if config.vocab_size is not None else None
        self.tie_weights()

    # -- hooks for subclasses -----------------------------------------------------------------------------------
    def build_layer(self, index: int) -> nn.Module:
        """Build layer ``index`` (0-based); every family implements this."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_layer(index)")

    def build_norm(self) -> nn.Module:
        """The final norm applied before pooling and the LM head (RMSNorm by default; ``nn.Identity`` for none)."""
        return get_norm("rmsnorm", self.config.d_model)

    def embed_positions(self, h: Tensor, positions: Tensor | None) -> Tensor:
        """Add absolute position information to the embedded input ``h [B, T, d_model]`` (default: none).

        ``positions`` is ``[B, T]`` (padding or decoding) or None for ``0 .. T-1``.
        """
        return h

    def layer_inputs(self) -> list[dict[str, Any]]:
        """Extra keywords for each layer, computed once per call (a model's cross-layer tensors); none by default."""
        return [{} for _ in self.layers]

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """Embed the primary input (``input_ids [B, T]`` or ``x [B, T, d_in]``) to ``[B, T, d_model]``."""
        if self.embed_tokens is not None:
            return self.embed_tokens(inputs)  # type: ignore[no-any-return]
        assert self.input_proj is not None
        return self.input_proj(inputs)  # type: ignore[no-any-return]

    # -- structure ----------------------------------------------------------------------------------------------
    @property
    def primary_input(self) -> str:
        """Name of the input ``step`` takes: ``"input_ids"`` with a vocabulary, else ``"x"``."""
        return "input_ids" if self.config.vocab_size is not None else "x"

    def tie_weights(self) -> None:
        """Share the LM head's weight with the token embedding when ``tie_embeddings`` is set."""
        if self.config.tie_embeddings and self.lm_head is not None and self.embed_tokens is not None:
            self.lm_head.weight = self.embed_tokens.weight

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(
        self, x: Tensor | None = None, input_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor | SequenceOutput:
        """Run the backbone on ``x [B, T, d_in]`` or ``input_ids [B, T]``; ``attention_mask [B, T]`` marks valid tokens.

        Returns ``[B, T, d_model]`` (or logits ``[B, T, vocab_size]``), pooled to ``[B, ...]`` by ``output``; a
        :class:`SequenceOutput` when the layers return auxiliary losses.
        """
        self.check_inputs(x=x, input_ids=input_ids, attention_mask=attention_mask)
        inputs = input_ids if self.embed_tokens is not None else x
        assert inputs is not None
        positions = None if attention_mask is None else _positions_from_mask(attention_mask)  # (B, T)
        h = self.embed_dropout(self.embed_positions(self.embed_inputs(inputs), positions))
        aux: Tensor | None = None
        for layer, extra in zip(self.layers, self.layer_inputs(), strict=True):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                out = checkpoint(layer, h, mask=attention_mask, positions=positions, use_reentrant=False, **extra)
            else:
                out = layer(h, mask=attention_mask, positions=positions, **extra)
            h, aux = _accumulate(out, aux)
        h = self.pool(self.norm(h), attention_mask)
        return self._output(h, aux)

    def pool(self, h: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Reduce ``h [B, T, d]`` as ``config.output`` asks: all positions, the last valid one, or the masked mean."""
        mode = self.config.output
        if mode == "all":
            return h
        if mode == "last":
            if attention_mask is None:
                return h[:, -1]
            T = h.shape[1]
            last = T - 1 - attention_mask.flip(-1).to(torch.int32).argmax(-1)  # (B,) index of the last True
            return h[torch.arange(h.shape[0], device=h.device), last]
        if attention_mask is None:
            return h.mean(dim=1)
        weights = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
        return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def _output(self, h: Tensor, aux: Tensor | None) -> Tensor | SequenceOutput:
        out: Tensor = self.lm_head(h) if self.lm_head is not None else h
        if not self.returns_aux_loss:
            return out
        if aux is None:
            aux = h.new_zeros(())
        if self.lm_head is not None:
            return SequenceOutput(logits=out, aux_loss=aux)
        return SequenceOutput(hidden=out, aux_loss=aux)

    # -- decoding -----------------------------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SequenceState:
        """An empty decoding state; ``max_len`` preallocates static caches (no reallocation while stepping)."""
        reference = next(self.parameters())
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        layers = []
        for index, layer in enumerate(self.layers):
            init = getattr(layer, "init_state", None)
            if init is None:
                raise TypeError(f"{type(self).__name__}: layer {index} ({type(layer).__name__}) has no init_state")
            layers.append(init(batch_size, max_len=max_len, device=device, dtype=dtype))
        return SequenceState(layers=layers, position=torch.zeros(batch_size, dtype=torch.long, device=device))

    def step(
        self, x: Tensor, state: SequenceState, *, attention_mask: Tensor | None = None
    ) -> tuple[Tensor | SequenceOutput, SequenceState]:
        """Advance by ``t >= 1`` positions of the primary input; returns ``(y, state)`` with ``state`` updated in place.

        ``y`` is what ``forward`` returns at those positions with ``output="all"`` (a :class:`SequenceOutput` whose
        ``aux_loss`` covers only these positions when the layers have one). ``attention_mask [B, t]`` marks the new
        positions that are valid (for padded prompts); their positions continue from ``state.position``.
        """
        if not is_capturing():  # validation reads values back to the host, which a CUDA graph capture forbids
            self.check_inputs(**{self.primary_input: x, "attention_mask": attention_mask})
        if attention_mask is None:
            t = x.shape[1]
            positions = state.position[:, None] + torch.arange(t, device=state.position.device)  # (B, t)
            state.position.add_(t)
        else:
            positions = state.position[:, None] + _positions_from_mask(attention_mask)  # (B, t)
            state.position.add_(attention_mask.sum(dim=-1))
        h = self.embed_dropout(self.embed_positions(self.embed_inputs(x), positions))
        aux: Tensor | None = None
        for layer, layer_state, extra in zip(self.layers, state.layers, self.layer_inputs(), strict=True):
            h, aux = _accumulate(layer(h, mask=attention_mask, positions=positions, state=layer_state, **extra), aux)
        return self._output(self.norm(h), aux), state


def _accumulate(out: Any, aux: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Split a layer's output into hidden states and its auxiliary loss, adding the loss to the running ``aux``."""
    h, layer_aux = out if isinstance(out, tuple) else (out, None)
    if layer_aux is not None:
        aux = layer_aux if aux is None else aux + layer_aux
    return h, aux


def _positions_from_mask(mask: Tensor) -> Tensor:
    """Index of each position among the valid ones, ``cumsum(mask) - 1`` (``-1`` before the first valid one)."""
    return mask.to(torch.long).cumsum(dim=-1) - 1
