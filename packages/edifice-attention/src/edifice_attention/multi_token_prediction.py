"""Multi-token prediction: a shared trunk, ``n`` transformer-layer heads, one unembedding, self-speculative decoding.

Gloeckle, Youbi Idrissi, Rozière, Lopez-Paz and Synnaeve (2024), "Better & Faster Large Language Models via
Multi-token Prediction", ICML 2024, https://arxiv.org/abs/2404.19737. Implemented:

* §2, eq. (3)-(4): ``z_t = f_s(x_{<=t})`` is the ``decoder_only`` trunk (``n_layers`` causal blocks); head ``i`` is one
  more block of the same kind, ``f_{h_i}``, applied to ``z``; every head goes through the shared final norm and the
  shared unembedding ``f_u`` (``lm_head``, tied to the embedding when ``tie_embeddings``):
  ``P(x_{t+i} | x_{<=t}) = softmax(f_u(f_{h_i}(z)))_t``. ``forward`` returns :class:`MultiTokenOutput`: ``logits``
  (head 1, the next-token head: the model is a drop-in language model) and ``head_logits [B, T, n, V]``.
* eq. (1)-(2): the training loss ``L_n = -sum_t sum_{i=1..n} log P(x_{t+i} | x_{<=t})`` is :func:`multi_token_loss`
  (and :meth:`MultiTokenPrediction.loss`), each head's cross-entropy averaged over its ``T - i`` targets and the
  ``n`` averages summed (the authors' normalisation of eq. 2 per head).
* §2, Fig. 2, memory-efficient implementation: :meth:`MultiTokenPrediction.sequential_backward` computes the trunk
  once, then runs forward *and backward* of one head at a time from a detached copy of ``z`` (only one head's
  ``[B, T, V]`` logits are alive at once) accumulating ``dL/dz``, and finally back-propagates ``dL/dz`` through the
  trunk; its gradients equal those of ``loss(...).loss.backward()``.
* §3.2, self-speculative decoding = blockwise parallel decoding (Stern et al. 2018, arXiv:1811.03115, §3 predict /
  verify / accept, with §4's merged verify-and-predict call): :func:`speculative_generate` drafts ``k <= n`` tokens
  with heads ``1..k`` (head 1's draft is the greedy token itself), feeds the draft through ``step`` in one call,
  accepts the longest prefix that the next-token head confirms and takes the next draft from the heads at the last
  accepted position. The output equals plain greedy decoding with head 1 exactly; acceptance statistics come back in
  :class:`SpeculativeOutput`.

Decoding: ``step`` runs the trunk and every head with a KV cache each (:class:`MultiTokenState`), so the heads can
draft at any position. Rejected draft positions are taken back by marking their cache slots invalid (the cache's
padding mechanism: positions, not slot indices, decide causality) and rewinding each static cache over the slots that
no row accepted, so batch rows may accept different numbers of tokens and a static cache stays static.

Deviations and choices: ``n_layers`` counts the shared trunk only (the paper replaces the last of a baseline's
layers by the ``n`` heads to match parameters; build ``n_layers - 1`` for that comparison); the authors' code (the
``facebook/multi-token-prediction`` release, as read) applies one shared final norm to every head, as here. Decoding
is greedy only and runs to ``max_new_tokens`` (no end-of-sequence stop); a prompt with padding must be left-padded.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from edifice.blocks.kv_cache import DynamicKVCache, StaticKVCache
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.errors import InputError
from edifice.graphs import is_capturing
from edifice.outputs import model_output
from edifice_attention.configs.multi_token_prediction import MultiTokenPredictionConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = [
    "MultiTokenLoss",
    "MultiTokenOutput",
    "MultiTokenPrediction",
    "MultiTokenState",
    "SpeculativeOutput",
    "multi_token_loss",
    "speculative_generate",
]


@model_output
class MultiTokenOutput:
    """Output of :class:`MultiTokenPrediction`: the next-token logits and the logits of every head."""

    logits: Tensor
    """``[B, T?, V]``: head 1's logits (next token), equal to ``head_logits[..., 0, :]``."""
    head_logits: Tensor
    """``[B, T?, n, V]``: ``head_logits[:, t, i - 1]`` scores the token at position ``t + i``."""
    aux_loss: Tensor | None = None
    """MoE load-balancing loss of the trunk and the heads (when ``n_experts > 0``), already weighted."""


@model_output
class MultiTokenLoss:
    """The multi-token training loss (eq. 2) and its parts."""

    loss: Tensor
    """Scalar: ``sum(head_losses)`` plus ``aux_loss`` when there is one."""
    head_losses: Tensor
    """``[n]``: head ``i``'s mean cross-entropy of the token ``i`` positions ahead."""
    aux_loss: Tensor | None = None
    """MoE load-balancing loss (already weighted), included in ``loss``."""


@model_output
class MultiTokenState:
    """Decoding state: the trunk's and each head's KV caches, and the next position of every row."""

    layers: list[Any]
    """One KV cache per trunk layer."""
    heads: list[Any]
    """One KV cache per head (each head is a transformer layer that attends over the trunk's outputs)."""
    position: Tensor
    """``[B]`` int64: the absolute position the next valid token of each row gets."""


@model_output
class SpeculativeOutput:
    """Result of :func:`speculative_generate`: the greedy continuation and how well the heads drafted it."""

    tokens: Tensor
    """``[B, max_new_tokens]`` int64: the generated tokens (identical to plain greedy decoding)."""
    accepted: Tensor
    """``[B]`` int64: draft tokens of heads ``2..k`` that the next-token head confirmed."""
    drafted: Tensor
    """``[B]`` int64: draft tokens of heads ``2..k`` proposed (``k - 1`` per verification call)."""
    calls: Tensor
    """``[B]`` int64: verification calls of the model after the prefill (plain greedy needs ``max_new_tokens - 1``)."""

    @property
    def acceptance_rate(self) -> Tensor:
        """``[B]`` float: ``accepted / drafted`` (0 when nothing was drafted, ``k = 1``)."""
        return self.accepted.double() / self.drafted.clamp(min=1).double()

    @property
    def tokens_per_call(self) -> Tensor:
        """``[B]`` float: tokens produced per model call, the prefill included (1 for plain greedy decoding)."""
        return self.tokens.shape[1] / (self.calls + 1).double()


class MultiTokenPrediction(DecoderOnly):
    """The ``decoder_only`` trunk plus ``n_predictions`` transformer-layer heads sharing the final norm and unembedding.

    Parameters: the trunk's (``embed_tokens``, ``layers``, ``norm``, ``lm_head``, named as in
    :class:`~edifice_attention.decoder_only.DecoderOnly`) and ``heads.{i}`` (a
    :class:`~edifice.blocks.transformer.TransformerBlock` each; ``heads.0`` predicts the next token).
    """

    config_class: ClassVar[type[ArchConfig]] = MultiTokenPredictionConfig
    config: MultiTokenPredictionConfig

    def __init__(self, config: MultiTokenPredictionConfig) -> None:
        super().__init__(config)
        n = config.n_layers
        self.heads = nn.ModuleList([self.build_layer(n + i) for i in range(config.n_predictions)])
        self.reset_parameters()

    def _heads(self) -> list[TransformerBlock]:
        return [cast(TransformerBlock, head) for head in self.heads]

    @property
    def n_predictions(self) -> int:
        """Number of heads ``n``."""
        return len(self.heads)

    # -- forward ------------------------------------------------------------------------------------------------
    def _run(self, layer: nn.Module, h: Tensor, aux: Tensor | None, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        """One block (checkpointed when asked and training); adds its auxiliary loss to ``aux``."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled() and kwargs.get("state") is None:
            out = checkpoint(layer, h, use_reentrant=False, **kwargs)
        else:
            out = layer(h, **kwargs)
        h, layer_aux = out if isinstance(out, tuple) else (out, None)
        if layer_aux is not None:
            aux = layer_aux if aux is None else aux + layer_aux
        return h, aux

    def trunk(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        states: list[Any] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The shared trunk ``z = f_s(x)`` ``[B, T, d_model]`` (no final norm) and its auxiliary loss."""
        h = self.embed_dropout(self.embed_positions(self.embed_inputs(input_ids), positions))
        aux: Tensor | None = None
        states = [None] * len(self.layers) if states is None else states
        for layer, state, extra in zip(self.layers, states, self.layer_inputs(), strict=True):
            h, aux = self._run(layer, h, aux, mask=attention_mask, positions=positions, state=state, **extra)
        return h, aux

    def head_hidden(
        self,
        z: Tensor,
        index: int,
        attention_mask: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        state: Any = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Head ``index`` (0-based) on the trunk output: ``norm(f_{h_i}(z))`` ``[B, T, d_model]`` and its aux loss."""
        h, aux = self._run(self.heads[index], z, None, mask=attention_mask, positions=positions, state=state)
        return self.norm(h), aux

    def forward(  # type: ignore[override]
        self, x: Tensor | None = None, input_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> MultiTokenOutput:
        """Every head's logits on ``input_ids [B, T]`` (pooled by ``output``); ``attention_mask`` marks valid tokens."""
        self.check_inputs(x=x, input_ids=input_ids, attention_mask=attention_mask)
        assert input_ids is not None
        positions = None if attention_mask is None else _positions_from_mask(attention_mask)
        z, aux = self.trunk(input_ids, attention_mask, positions=positions)
        logits = []
        for i in range(self.n_predictions):
            h, aux_i = self.head_hidden(z, i, attention_mask, positions=positions)
            logits.append(self.lm_head_logits(self.pool(h, attention_mask)))
            aux = _add(aux, aux_i)
        return self._multi_output(logits, aux)

    def lm_head_logits(self, h: Tensor) -> Tensor:
        """The shared unembedding ``f_u`` of normalised head states."""
        assert self.lm_head is not None
        out: Tensor = self.lm_head(h)
        return out

    def _multi_output(self, logits: list[Tensor], aux: Tensor | None) -> MultiTokenOutput:
        head_logits = torch.stack(logits, dim=-2)  # (B, T?, n, V)
        if self.returns_aux_loss and aux is None:
            aux = head_logits.new_zeros(())
        return MultiTokenOutput(logits=head_logits[..., 0, :], head_logits=head_logits, aux_loss=aux)

    # -- training objective (eq. 1-2) ---------------------------------------------------------------------------
    def loss(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, labels: Tensor | None = None
    ) -> MultiTokenLoss:
        """The n-token loss of eq. (2) on ``input_ids [B, T]`` (targets ``labels``, default the inputs themselves)."""
        if self.config.output != "all":
            raise ValueError(
                f"{self.config.arch}: loss needs output='all' (per-position logits), got {self.config.output!r}"
            )
        out = self(input_ids=input_ids, attention_mask=attention_mask)
        labels = input_ids if labels is None else labels
        result = multi_token_loss(out.head_logits, labels, attention_mask=attention_mask)
        if out.aux_loss is not None:
            result = MultiTokenLoss(
                loss=result.loss + out.aux_loss, head_losses=result.head_losses, aux_loss=out.aux_loss
            )
        return result

    def sequential_backward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, labels: Tensor | None = None
    ) -> MultiTokenLoss:
        """Fig. 2: back-propagate the loss of :meth:`loss` one head at a time; returns the (detached) loss.

        Gradients accumulate into ``.grad`` exactly as ``self.loss(...).loss.backward()`` would put them, but only one
        head's logits (and activations) are alive at a time: the trunk runs once, each head runs forward and backward
        from a detached copy of the trunk output (collecting ``dL/dz``), then ``dL/dz`` flows back through the trunk.
        """
        if self.config.output != "all":
            raise ValueError(f"{self.config.arch}: sequential_backward needs output='all', got {self.config.output!r}")
        self.check_inputs(input_ids=input_ids, attention_mask=attention_mask)
        labels = input_ids if labels is None else labels
        positions = None if attention_mask is None else _positions_from_mask(attention_mask)
        z, trunk_aux = self.trunk(input_ids, attention_mask, positions=positions)
        z_detached = z.detach().requires_grad_(True)
        head_losses, heads_aux = [], None
        for i in range(self.n_predictions):
            h, aux_i = self.head_hidden(z_detached, i, attention_mask, positions=positions)
            loss_i = _head_cross_entropy(self.lm_head_logits(h), labels, i + 1, attention_mask, -100)
            head_loss = loss_i if aux_i is None else loss_i + aux_i
            head_loss.backward()  # type: ignore[no-untyped-call]  # frees head i's graph and its logits
            head_losses.append(loss_i.detach())
            heads_aux = _add(heads_aux, None if aux_i is None else aux_i.detach())
        grad_z = z_detached.grad if z_detached.grad is not None else torch.zeros_like(z)
        if trunk_aux is None:
            z.backward(grad_z)  # type: ignore[no-untyped-call]
        else:
            torch.autograd.backward([z, trunk_aux], [grad_z, torch.ones_like(trunk_aux)])
        losses = torch.stack(head_losses)
        aux = _add(None if trunk_aux is None else trunk_aux.detach(), heads_aux)
        total = losses.sum() if aux is None else losses.sum() + aux
        return MultiTokenLoss(loss=total, head_losses=losses, aux_loss=aux)

    # -- decoding -----------------------------------------------------------------------------------------------
    def init_state(  # type: ignore[override]
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MultiTokenState:
        """Empty KV caches for the trunk and every head; ``max_len`` preallocates static caches."""
        base = super().init_state(batch_size, max_len=max_len, device=device, dtype=dtype)
        device = base.position.device
        dtype = next(self.parameters()).dtype if dtype is None else dtype
        heads = [layer.init_state(batch_size, max_len=max_len, device=device, dtype=dtype) for layer in self._heads()]
        return MultiTokenState(layers=base.layers, heads=heads, position=base.position)

    def step(  # type: ignore[override]
        self, x: Tensor, state: MultiTokenState, *, attention_mask: Tensor | None = None
    ) -> tuple[MultiTokenOutput, MultiTokenState]:
        """Advance by ``t >= 1`` tokens ``x [B, t]``: every head's logits at those positions (``state`` in place)."""
        if not is_capturing():
            self.check_inputs(input_ids=x, attention_mask=attention_mask)
        if attention_mask is None:
            positions = state.position[:, None] + torch.arange(x.shape[1], device=state.position.device)
            state.position.add_(x.shape[1])
        else:
            positions = state.position[:, None] + _positions_from_mask(attention_mask)
            state.position.add_(attention_mask.sum(dim=-1))
        z, aux = self.trunk(x, attention_mask, positions=positions, states=state.layers)
        logits = []
        for i, head_state in enumerate(state.heads):
            h, aux_i = self.head_hidden(z, i, attention_mask, positions=positions, state=head_state)
            logits.append(self.lm_head_logits(h))
            aux = _add(aux, aux_i)
        return self._multi_output(logits, aux), state

    def speculative_generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs: Any) -> SpeculativeOutput:
        """:func:`speculative_generate` with this model."""
        return speculative_generate(self, input_ids, max_new_tokens, **kwargs)


# -- the loss -----------------------------------------------------------------------------------------------------
def _head_cross_entropy(
    logits: Tensor, labels: Tensor, ahead: int, attention_mask: Tensor | None, ignore_index: int
) -> Tensor:
    """Mean CE of ``logits [B, T, V]`` at positions ``t`` against ``labels[:, t + ahead]`` (0 without any target)."""
    T = labels.shape[1]
    if ahead >= T:
        return logits.sum() * 0.0  # no target this far ahead; keeps the graph (and a zero gradient)
    targets = labels[:, ahead:]  # (B, T - ahead)
    if attention_mask is not None:  # both the source position and the target must be real tokens
        valid = attention_mask[:, ahead:] & attention_mask[:, :-ahead]
        targets = targets.masked_fill(~valid, ignore_index)
    source = logits[:, : T - ahead].float()
    losses = F.cross_entropy(source.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="none")
    count = (targets != ignore_index).sum()
    return losses.sum() / count.clamp(min=1)


def multi_token_loss(
    head_logits: Tensor, labels: Tensor, *, attention_mask: Tensor | None = None, ignore_index: int = -100
) -> MultiTokenLoss:
    """Eq. (2): ``sum_i mean_t CE(head_logits[:, t, i - 1], labels[:, t + i])`` for heads ``i = 1..n``.

    ``head_logits [B, T, n, V]``, ``labels [B, T]`` (usually the input ids; ``ignore_index`` drops a target);
    ``attention_mask [B, T]`` drops positions whose source or target is padding (padding at either end). Each head's
    cross-entropy (in fp32) is averaged over its valid targets; the loss is the sum over heads.
    """
    if head_logits.dim() != 4 or labels.shape != head_logits.shape[:2]:
        raise ValueError(
            f"multi_token_loss expects head_logits [B, T, n, V] and labels [B, T], got {list(head_logits.shape)} and "
            f"{list(labels.shape)}"
        )
    losses = torch.stack(
        [
            _head_cross_entropy(head_logits[:, :, i], labels, i + 1, attention_mask, ignore_index)
            for i in range(head_logits.shape[2])
        ]
    )
    return MultiTokenLoss(loss=losses.sum(), head_losses=losses)


# -- self-speculative decoding (§3.2) -------------------------------------------------------------------------------
@torch.no_grad()
def speculative_generate(
    model: MultiTokenPrediction,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    n_draft: int | None = None,
    max_len: int | None = None,
    static_cache: bool = True,
) -> SpeculativeOutput:
    """Greedy blockwise parallel decoding with the model's own heads (§3.2; Stern et al. 2018).

    Prefill the prompt ``input_ids [B, T]`` (left-padded when ``attention_mask`` is given); then repeat: the heads at
    the last accepted position draft ``k = n_draft`` tokens (head 1's is the exact greedy token), one ``step`` over the
    draft gives the next-token head's verdict after each draft token, the longest confirmed prefix is accepted and the
    rest is taken back from the caches. ``n_draft=1`` is plain greedy decoding. The caches are static (preallocated to
    ``max_len``; by default the smallest size that cannot overflow), so every ``step`` has static shapes;
    ``static_cache=False`` uses growing caches instead. Each call reads two numbers back to the host (whether to stop,
    how many slots to rewind). Run it in eval mode (dropout would make the draft and the verdict disagree).
    """
    n = model.n_predictions
    k = n if n_draft is None else n_draft
    if not 1 <= k <= n:
        raise ValueError(f"speculative_generate: n_draft must be in [1, {n}] (the model's heads), got {n_draft}")
    if max_new_tokens < 1:
        raise ValueError(f"speculative_generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if input_ids.dim() != 2:
        raise InputError(f"speculative_generate: input_ids expected [B, T], got {list(input_ids.shape)}")
    B, T = input_ids.shape
    if not static_cache:
        max_len = None
    elif max_len is None:  # batch 1 uses exactly its accepted slots; a batch may hold up to k slots per call
        max_len = T + max_new_tokens + k if B == 1 else T + k * (max_new_tokens + 1)
    device = input_ids.device
    state = model.init_state(B, max_len=max_len, device=device)
    out, state = model.step(input_ids, state, attention_mask=attention_mask)
    draft = out.head_logits[:, -1, :k].argmax(-1)  # (B, k): greedy token, then the guesses for t+2..t+k
    buffer = torch.zeros(B, max_new_tokens + 2 * k, dtype=torch.long, device=device)
    count = torch.zeros(B, dtype=torch.long, device=device)
    accepted_drafts, drafted, calls = (torch.zeros(B, dtype=torch.long, device=device) for _ in range(3))
    offsets = torch.arange(k, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    while True:
        index = count[:, None] + offsets  # (B, k) where this draft goes; finished rows keep their tokens
        buffer.scatter_(1, index, torch.where(done[:, None], buffer.gather(1, index), draft))
        done |= count + 1 >= max_new_tokens  # draft[:, 0] is exact: the last token needs no verification call
        if bool(done.all()):
            break
        active = ~done
        out, state = model.step(draft, state)  # verify: head 1 after each draft token
        verdict = out.logits.argmax(-1)  # (B, k): the greedy token after draft[:, j]
        confirmed = (draft[:, 1:] == verdict[:, :-1]).long().cumprod(-1).sum(-1)  # (B,) drafts 2..k confirmed
        n_accept = torch.where(active, 1 + confirmed, 1)  # (B,) in 1..k (finished rows idle with 1)
        _take_back(state, keep=offsets < n_accept[:, None], accepted=n_accept)
        calls += active.long()
        drafted += active.long() * (k - 1)
        accepted_drafts += torch.where(active, confirmed, 0)
        count += torch.where(active, n_accept, 0)
        last = out.head_logits[torch.arange(B, device=device), n_accept - 1]  # (B, n, V) at the last accepted token
        draft = last[:, :k].argmax(-1)
    return SpeculativeOutput(tokens=buffer[:, :max_new_tokens], accepted=accepted_drafts, drafted=drafted, calls=calls)


def _take_back(state: MultiTokenState, *, keep: Tensor, accepted: Tensor) -> None:
    """Forget the rejected positions of the last ``k`` written: ``keep [B, k]`` marks the accepted ones per row.

    Their cache slots become invalid (like padding, they are attended by no one); slots that no row kept are
    rewound, so a batch of one uses exactly as many slots as plain decoding. Positions restart after the accepted.
    """
    k = keep.shape[1]
    rewind = k - int(accepted.max())  # slots at the end that every row rejected
    for cache in [*state.layers, *state.heads]:
        if isinstance(cache, StaticKVCache):
            index = cache.length - k + torch.arange(k, device=keep.device)
            cache.valid.index_copy_(1, index, cache.valid.index_select(1, index) & keep)
            cache.length.sub_(rewind)
        elif isinstance(cache, DynamicKVCache):
            valid = torch.cat([cache.valid[:, :-k], cache.valid[:, -k:] & keep], dim=1)
            end = valid.shape[1] - rewind
            cache.keys, cache.values = cache.keys[:, :, :end], cache.values[:, :, :end]
            cache.positions, cache.valid = cache.positions[:, :end], valid[:, :end]
        else:
            raise TypeError(f"speculative decoding cannot take back draft tokens from a {type(cache).__name__}")
    state.position.add_(accepted - k)


def _positions_from_mask(mask: Tensor) -> Tensor:
    """Index of each position among the valid ones, ``cumsum(mask) - 1`` (as the backbone's)."""
    return mask.to(torch.long).cumsum(dim=-1) - 1


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b
