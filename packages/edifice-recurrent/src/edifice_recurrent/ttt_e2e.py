"""TTT-E2E: a sliding-window Transformer that keeps training at test time by next-token prediction.

Tandon, Dalal, Li, Koceja, Rød, Buchanan, Wang, Leskovec, Koyejo, Hashimoto, Guestrin, McCaleb, Choi & Sun (2025),
"End-to-End Test-Time Training for Long Context", https://arxiv.org/abs/2512.23675. Long-context modelling as
continual learning: the architecture is a standard Transformer with sliding-window attention, and the model
compresses the context it reads into the weights of its last blocks' MLPs by gradient descent on its own
next-token loss, mini-batch by mini-batch; at training time the initial weights are meta-learned through that inner
loop. The equations are written out in ``docs/design/ttt_e2e.md`` (the signature test checks them)::

    h = h + SWA(RMSNorm(h))                              causal sliding window of window_size tokens, RoPE
    h = h + MLP(RMSNorm(h)) [+ MLP(RMSNorm(h); W_i)]     the last ceil(mutable_fraction · n_layers) blocks add a
                                                          test-time MLP with fast weights W = (W1, W2)
    ℓ_i(W_i) = mean_{t ∈ B_i, t+1 < T} CE(head(RMSNorm(h_t)), x_{t+1})          next-token loss of mini-batch i
    W_{i+1} = W_i - η ∇_{W_i} ℓ_i(W_i)                                          one step per mini-batch of b tokens

Mini-batch ``i`` is computed with ``W_i``; the keys of earlier mini-batches (computed with their own fast weights) are
constants of the inner gradient. In training mode the inner steps keep their graph (``create_graph``), so a loss on
the outputs meta-learns ``W_0`` and every slow weight through them (E2E at training time). Without a vocabulary the
inner loss is the continuous analogue ``½ mean (P RMSNorm(h_t) - x_{t+1})²`` with a learned next-input head ``P``.

``forward`` runs the static blocks below the first mutable one on the whole sequence, then the mutable blocks
mini-batch by mini-batch (the inner loop is sequential across mini-batches). ``step`` is the recurrent form, token by
token from a constant-size state: ring buffers of keys and values (``window_size`` per static block,
``window_size + mini_batch_size`` per mutable block), the fast weights, and the current mini-batch's inputs to the
first mutable block and raw inputs. When the token after a complete mini-batch arrives, ``step`` recomputes that
mini-batch's mutable blocks with gradients, takes the inner step and then processes the token; it reproduces
``forward``. The position counter is a device tensor and ``due`` a per-row mask: eagerly, ``step`` skips the inner
step when no row is due (one host read of that flag, which saves recomputing a mini-batch on every token); under
CUDA-graph capture it always runs the inner step and ``due`` selects the rows it updates, so
:class:`edifice.graphs.GraphedStep` captures ``step`` once and every replay advances it.

Padding: valid tokens are moved to the front of each sequence before the model (and back after), so mini-batches
start at the first valid token; padded targets are left out of the inner loss; ``step`` skips padded tokens.

Initialisation: every weight and ``W_0`` ``N(0, init_std²)``, unit RMSNorm gains. Deviations: the MLPs are
``GELU(x A) B`` without biases; the inner learning rate is one fixed hyperparameter (``inner_lr``); training
through ``step`` is not supported (its inner gradients are taken on detached copies).
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone, SequenceOutput
from edifice.blocks.ffn import FeedForward
from edifice.blocks.kv_cache import SlidingWindowKVCache
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding, apply_rotary
from edifice.config import ArchConfig
from edifice.graphs import is_capturing
from edifice.outputs import model_output
from edifice_recurrent._test_time import compact, restore
from edifice_recurrent.configs.ttt_e2e import TTTE2EConfig

__all__ = ["TTTE2E", "E2EAttention", "E2EBlock", "TTTE2EState"]

#: Keys, values, positions ``[B, L]`` and validity ``[B, L]`` (or None: all valid) of earlier tokens.
Past = tuple[Tensor, Tensor, Tensor, Tensor | None]


@model_output
class TTTE2EState:
    """Decoding state of :class:`TTTE2E`: constant size, updated in place by ``step``."""

    caches: list[SlidingWindowKVCache]
    """Per block, the last ``window_size`` keys/values (``window_size + mini_batch_size`` for mutable blocks)."""
    fast: list[Tensor]
    """The fast weights ``W1 [B, d, h]``, ``W2 [B, h, d]`` of each mutable block (fp32)."""
    buffer: Tensor
    """``[B, b, d_model]``: the current mini-batch's inputs to the first mutable block."""
    inputs: Tensor
    """``[B, b]`` token ids or ``[B, b, d_in]`` features: the current mini-batch's raw inputs (their targets)."""
    count: Tensor
    """``[B]`` int64: valid tokens seen so far (the next one's position)."""


class E2EAttention(nn.Module):
    """Causal sliding-window multi-head attention with RoPE; keys of earlier tokens can be passed in."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, window: int, rope_theta: float = 10000.0) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.window = n_heads, head_dim, window
        width = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.rope = RotaryEmbedding(head_dim, base=rope_theta)

    def qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated queries and keys and the values of ``x [B, T, d]`` at ``positions [B, T]``, each ``[B, H, T, D]``."""
        B, T, _ = x.shape
        q, k, v = (
            p(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        cos, sin = self.rope(positions)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, k_valid: Tensor | None) -> Tensor:
        """Attention of ``q [B, H, T, D]`` over ``k, v [B, H, L, D]`` by position (causal, windowed): ``[B, T, d]``."""
        mask = None if k_valid is None else k_valid[:, None, None, :]
        out = ops.sdpa(
            q, k, v, causal=True, window=self.window, q_positions=q_pos, k_positions=k_pos, attn_mask=mask
        )  # (B, H, T, D)
        B, _, T, _ = out.shape
        y: Tensor = self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        return y


class E2EBlock(nn.Module):
    """``h + SWA(RMSNorm(h))`` then ``h + MLP(RMSNorm(h)) [+ MLP(RMSNorm(h); W)]`` (the test-time MLP if mutable)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        hidden: int,
        window: int,
        *,
        mutable: bool,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.mutable = mutable
        self.attn_norm = get_norm("rmsnorm", d_model, eps=norm_eps)
        self.attn = E2EAttention(d_model, n_heads, head_dim, window, rope_theta)
        self.mlp_norm = get_norm("rmsnorm", d_model, eps=norm_eps)
        self.mlp = FeedForward(d_model, hidden, activation="gelu", bias=False)  # static: fixed at test time
        self.W1 = nn.Parameter(torch.empty(d_model, hidden)) if mutable else None  # W_0 of the test-time MLP
        self.W2 = nn.Parameter(torch.empty(hidden, d_model)) if mutable else None

    def fast_init(self) -> list[Tensor]:
        """The initial fast weights ``[W1, W2]`` (empty for a static block)."""
        return [] if self.W1 is None or self.W2 is None else [self.W1, self.W2]

    def forward(
        self,
        h: Tensor,
        positions: Tensor,
        *,
        past: Past | None = None,
        fast: tuple[Tensor, Tensor] | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``h [B, T, d]`` at ``positions [B, T]`` after ``past`` keys, with fast weights ``[B, ...]`` -> (h, k, v)."""
        q, k, v = self.attn.qkv(self.attn_norm(h), positions)
        if past is None:
            keys, values, k_pos, k_valid = k, v, positions, valid
        else:
            keys, values = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
            k_pos = torch.cat([past[2], positions], 1)
            k_valid = (
                None
                if past[3] is None and valid is None
                else torch.cat([_ones_if(past[3], past[2]), _ones_if(valid, positions)], 1)
            )
        h = h + self.attn.attend(q, keys, values, positions, k_pos, k_valid)
        x = self.mlp_norm(h)
        y = self.mlp(x)
        if fast is not None:  # the test-time MLP: GELU(x W1) W2 with this sequence's fast weights
            W1, W2 = (w.to(x.dtype) for w in fast)
            y = y + torch.einsum("bth,bhd->btd", F.gelu(torch.einsum("btd,bdh->bth", x, W1)), W2)
        return h + y, k, v

    def step(
        self,
        h: Tensor,
        positions: Tensor,
        cache: SlidingWindowKVCache,
        valid: Tensor,
        fast: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """One token ``h [B, 1, d]``: attend the ring buffer (updated in place) and apply the MLPs."""
        q, k, v = self.attn.qkv(self.attn_norm(h), positions)
        keys, values, k_pos, k_mask = cache.update_and_fetch(k, v, positions, valid)
        h = h + self.attn.attend(q, keys, values, positions, k_pos, k_mask[:, 0, 0])
        x = self.mlp_norm(h)
        y = self.mlp(x)
        if fast is not None:
            W1, W2 = (w.to(x.dtype) for w in fast)
            y = y + torch.einsum("bth,bhd->btd", F.gelu(torch.einsum("btd,bdh->bth", x, W1)), W2)
        out: Tensor = h + y
        return out


def _ones_if(valid: Tensor | None, like: Tensor) -> Tensor:
    """``valid``, or all-True of ``like``'s shape ``[B, L]``."""
    return torch.ones_like(like, dtype=torch.bool) if valid is None else valid


class TTTE2E(SequenceBackbone):
    """TTT-E2E: sliding-window Transformer blocks, the last ones with an MLP trained at test time (module doc)."""

    config_class: ClassVar[type[ArchConfig]] = TTTE2EConfig
    config: TTTE2EConfig

    def __init__(self, config: TTTE2EConfig) -> None:
        super().__init__(config)
        out = config.d_in if config.d_in is not None else config.d_model
        # The next-input head of the inner loss for feature inputs (with a vocabulary the LM head plays this role).
        self.next_head = nn.Linear(config.d_model, out, bias=False) if config.vocab_size is None else None
        self.reset_parameters()

    @property
    def first_mutable(self) -> int:
        """Index of the first block with a test-time MLP."""
        return self.config.n_layers - self.config.n_mutable

    def build_layer(self, index: int) -> nn.Module:
        """Block ``index``; the last ``n_mutable`` carry a test-time MLP."""
        c = self.config
        mutable = index >= c.n_layers - c.n_mutable
        return E2EBlock(
            c.d_model,
            c.n_heads,
            c.head_size,
            c.mlp_hidden,
            c.window_size,
            mutable=mutable,
            rope_theta=c.rope_theta,
            norm_eps=c.norm_eps,
        )

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    def reset_parameters(self) -> None:
        """``N(0, init_std²)`` for every linear and embedding weight and for ``W_0``; unit RMSNorm gains."""
        super().reset_parameters()
        std = self.config.init_std
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    nn.init.normal_(module.weight, std=std)
                if isinstance(module, E2EBlock):
                    for w in module.fast_init():
                        nn.init.normal_(w, std=std)

    def _mutable_blocks(self) -> list[E2EBlock]:
        return [layer for layer in self.layers[self.first_mutable :] if isinstance(layer, E2EBlock)]

    # -- the inner loss -----------------------------------------------------------------------------------------
    def inner_loss(self, y: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
        """Σ over sequences of the mean next-token loss of ``y = RMSNorm(h) [B, n, d]`` against ``targets``.

        ``targets`` are the next tokens ``[B, n]`` (cross-entropy of the LM head's logits) or the next inputs
        ``[B, n, d_in]`` (``½ mean (P y - x)²``); ``valid [B, n]`` leaves targets out.
        """
        work = torch.promote_types(y.dtype, torch.float32)
        if self.lm_head is not None:
            logits = self.lm_head(y).to(work)  # (B, n, V)
            # cross_entropy takes int64 class indices only; input_ids may be int32.
            per_token = F.cross_entropy(logits.transpose(1, 2), targets.long(), reduction="none")  # (B, n)
        else:
            assert self.next_head is not None
            per_token = 0.5 * (self.next_head(y).to(work) - targets.to(work)).square().mean(-1)
        weight = torch.ones_like(per_token) if valid is None else valid.to(work)
        return ((per_token * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)).sum()

    def _inner_step(self, loss: Tensor, fast: list[Tensor], create_graph: bool) -> list[Tensor]:
        """``W - η ∇_W ℓ`` for every fast weight."""
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        return [w - self.config.inner_lr * g for w, g in zip(fast, grads, strict=True)]

    # -- the training form --------------------------------------------------------------------------------------
    def forward(
        self, x: Tensor | None = None, input_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor | SequenceOutput:
        """``x [B, T, d_in]`` or ``input_ids [B, T]`` -> ``[B, T, d_model]`` (or logits), learning while it reads."""
        self.check_inputs(x=x, input_ids=input_ids, attention_mask=attention_mask)
        raw = input_ids if self.embed_tokens is not None else x
        assert raw is not None
        B, T = raw.shape[:2]
        raw, order = compact(raw, attention_mask)  # valid tokens first: mini-batches start at the first token
        valid = None if attention_mask is None or order is None else torch.gather(attention_mask, 1, order)
        positions = torch.arange(T, device=raw.device).expand(B, T)
        h = self.embed_dropout(self.embed_inputs(raw))
        for layer in self.layers[: self.first_mutable]:  # the static blocks do not depend on the fast weights
            h, _, _ = layer(h, positions)
        y = restore(self._mutable_pass(h, raw, valid, positions), order)
        return self._output(self.pool(y, attention_mask), None)

    def _mutable_pass(self, h: Tensor, raw: Tensor, valid: Tensor | None, positions: Tensor) -> Tensor:
        """The mutable blocks and the final norm, mini-batch by mini-batch, each followed by its inner step."""
        B, T, _ = h.shape
        b, window = self.config.mini_batch_size, self.config.window_size
        blocks = self._mutable_blocks()
        outer = torch.is_grad_enabled()
        fast = [w.unsqueeze(0).expand(B, *w.shape) for block in blocks for w in block.fast_init()]  # W_0
        past: list[Past | None] = [None] * len(blocks)
        outs = []
        for start in range(0, T, b):
            end = min(start + b, T)
            learn = end < T  # a later token needs W_{i+1}
            create = learn and outer and all(w.requires_grad for w in fast)  # meta-learning: keep the inner graph
            if learn and not create:
                fast = [w.detach().requires_grad_(True) for w in fast]
            with torch.enable_grad() if learn else contextlib.nullcontext():
                hc, pos = h[:, start:end], positions[:, start:end]
                for j, block in enumerate(blocks):
                    hc, k, v = block(hc, pos, past=past[j], fast=(fast[2 * j], fast[2 * j + 1]))
                    past[j] = _keep_window(past[j], k, v, pos, window, detach=not create)
                y = self.norm(hc)
                if learn:
                    target_valid = None if valid is None else valid[:, start:end] & valid[:, start + 1 : end + 1]
                    loss = self.inner_loss(y, raw[:, start + 1 : end + 1], target_valid)
                    fast = self._inner_step(loss, fast, create)
                    if not create:
                        fast = [w.detach() for w in fast]
            outs.append(y if outer else y.detach())
        return torch.cat(outs, 1)

    # -- the recurrent form -------------------------------------------------------------------------------------
    def init_state(  # type: ignore[override]
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TTTE2EState:
        """Empty ring buffers, the fast weights at ``W_0`` (fp32), an empty mini-batch; constant size."""
        c = self.config
        reference = next(self.parameters())
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        caches = [
            SlidingWindowKVCache.empty(
                batch_size,
                c.n_heads,
                c.head_size,
                c.window_size + (c.mini_batch_size if i >= self.first_mutable else 0),
                device=device,
                dtype=dtype,
            )
            for i in range(c.n_layers)
        ]
        work = torch.promote_types(reference.dtype, torch.float32)
        fast = [
            w.detach().to(device=device, dtype=work).unsqueeze(0).repeat(batch_size, 1, 1)
            for block in self._mutable_blocks()
            for w in block.fast_init()
        ]
        b = c.mini_batch_size
        if self.embed_tokens is not None:
            inputs = torch.zeros(batch_size, b, dtype=torch.long, device=device)
        else:
            inputs = torch.zeros(batch_size, b, c.d_in or c.d_model, device=device, dtype=dtype)
        return TTTE2EState(
            caches=caches,
            fast=fast,
            buffer=torch.zeros(batch_size, b, c.d_model, device=device, dtype=dtype),
            inputs=inputs,
            count=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def step(  # type: ignore[override]
        self, x: Tensor, state: TTTE2EState, *, attention_mask: Tensor | None = None
    ) -> tuple[Tensor | SequenceOutput, TTTE2EState]:
        """Advance by ``t >= 1`` positions of the primary input, token by token; returns ``(y, state)``."""
        if not is_capturing():  # validation reads values back to the host, which a CUDA graph capture forbids
            self.check_inputs(**{self.primary_input: x, "attention_mask": attention_mask})
        outs = []
        for i in range(x.shape[1]):
            token = x[:, i : i + 1]
            valid = (
                torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
                if attention_mask is None
                else attention_mask[:, i]
            )
            self._learn_if_due(state, token, valid)
            outs.append(self._advance(state, token, valid))
        return self._output(torch.cat(outs, 1), None), state

    def _learn_if_due(self, state: TTTE2EState, token: Tensor, valid: Tensor) -> None:
        """The inner step of the mini-batch that ``token`` completes (it is its last target), where one ends."""
        b = self.config.mini_batch_size
        due = valid & (state.count % b == 0) & (state.count > 0)
        # Skipping the step when no row is due reads ``due`` on the host; under CUDA-graph capture the step always
        # runs and ``due`` selects the rows it updates, so one graph serves every position.
        if not is_capturing() and not bool(due.any()):
            return
        start = state.count - b  # (B,) first position of the finished mini-batch
        positions = start[:, None] + torch.arange(b, device=token.device)  # (B, b)
        with torch.enable_grad():
            fast = [w.detach().requires_grad_(True) for w in state.fast]
            hc = state.buffer
            for j, block in enumerate(self._mutable_blocks()):
                cache = state.caches[self.first_mutable + j]
                slots = cache.window
                k_pos = cache.positions[:, :slots]
                before = cache.valid[:, :slots] & (k_pos < start[:, None])  # keys of earlier mini-batches only
                past = (cache.keys[:, :, :slots], cache.values[:, :, :slots], k_pos, before)
                hc, _, _ = block(hc, positions, past=past, fast=(fast[2 * j], fast[2 * j + 1]))
            targets = torch.cat([state.inputs[:, 1:], token], 1)
            new = self._inner_step(self.inner_loss(self.norm(hc), targets), fast, create_graph=False)
        for old, w in zip(state.fast, new, strict=True):
            old.copy_(torch.where(due[:, None, None], w.detach(), old))

    def _advance(self, state: TTTE2EState, token: Tensor, valid: Tensor) -> Tensor:
        """Run one token through every block (ring buffers updated in place) and buffer it; returns ``[B, 1, d]``."""
        b = self.config.mini_batch_size
        positions = state.count[:, None]  # (B, 1)
        slot = (torch.arange(b, device=token.device)[None, :] == (state.count % b)[:, None]) & valid[:, None]  # (B, b)
        h = self.embed_dropout(self.embed_inputs(token))
        blocks = self._mutable_blocks()
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, E2EBlock)
            fast = None
            if i >= self.first_mutable:
                if i == self.first_mutable:
                    state.buffer.copy_(torch.where(slot[..., None], h.to(state.buffer.dtype), state.buffer))
                j = blocks.index(layer)
                fast = (state.fast[2 * j], state.fast[2 * j + 1])
            h = layer.step(h, positions, state.caches[i], valid[:, None], fast)
        expand = slot if state.inputs.dim() == 2 else slot[..., None]
        state.inputs.copy_(torch.where(expand, token.to(state.inputs.dtype), state.inputs))
        state.count.add_(valid.to(state.count.dtype))
        out: Tensor = self.norm(h)
        return out


def _keep_window(past: Past | None, k: Tensor, v: Tensor, positions: Tensor, window: int, *, detach: bool) -> Past:
    """Earlier keys for the next mini-batch: ``past`` then this one's, the last ``window`` positions only."""
    if detach:
        k, v = k.detach(), v.detach()
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        positions = torch.cat([past[2], positions], 1)
    return k[:, :, -window:], v[:, :, -window:], positions[:, -window:], None
