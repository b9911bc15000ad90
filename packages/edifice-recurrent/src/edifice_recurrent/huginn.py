"""``huginn``: a recurrent-depth transformer that scales test-time compute by iterating one block in latent space.

Geiping, McLeish, Jain, Kirchenbauer, Singh, Bartoldson, Kailkhura, Bhatele & Goldstein, "Scaling up Test-Time
Compute with Latent Reasoning: A Recurrent Depth Approach", 2025, https://arxiv.org/abs/2502.05171. Three groups of
causal decoder layers (§3, "macroscopic design")::

    e   = P(x)                              prelude: embed, then l_P layers
    s_0 ~ N(0, σ² I_{n·h})                  a fresh random latent state per token (truncated to ±3σ)
    s_i = R(e, s_{i-1}),  i = 1 .. r        the core block, the SAME weights at every iteration
    p   = C(s_r)                            coda: l_C layers, norm, LM head

with ``R(e, s) = core_layers(A([s ; e]))``: the adapter ``A`` (a linear map ``2h -> h``) injects the embedded input at
every iteration. Each layer is a "sandwich" block (§3, "microscopic design"): causal self-attention with RoPE (base
50000) and a gated SiLU MLP, each sub-layer normalised before and after its residual sum,
``x̂ = n_2(x + Attn(n_1(x)))``, ``y = n_4(x̂ + MLP(n_3(x̂)))``, RMSNorm throughout. As in the released model the final
norm is applied to ``s_r`` before the coda and again after it, and token embeddings are scaled by ``sqrt(h)``.

Training (§3, "training objective"): ``r`` is drawn per step from a log-normal Poisson,
``τ ~ N(log r̄ - σ_r²/2, σ_r)`` with ``σ_r = 1/2`` and ``r = Poisson(e^τ) + 1``, and gradients flow through only the
last ``k`` iterations (truncated backprop; the first ``r - k`` run without gradient, while the injected ``e`` keeps its
gradient at every iteration).
At evaluation ``r = num_iterations`` (any ``r`` may be passed to ``forward``: the test-time compute knob).

Decoding: every layer *instance* has its own KV cache -- prelude layers, each core layer at each iteration (``r ·
l_R`` caches), coda layers -- so ``step`` reproduces ``forward`` exactly (the paper's cache sharing across iterations
and per-token adaptive exits are inference approximations left out).

Randomness: ``s_0`` (and, in training, ``r``) is drawn from the ``generator`` given to ``forward``/``step``.
``state_init`` picks the training draw, ``eval_state_init`` the evaluation one. At evaluation we default to
``"zero"``, which makes inference deterministic and is what ``step == forward`` relies on; the released code's default
(``init_scale=1.0``) draws a random ``s_0`` at evaluation too, and zero is opt-in there (``init_scale=0``).
``eval_state_init="normal"`` gives the released behaviour.

Deviations: RoPE uses the rotate-half pairing (the released code pairs adjacent features; the same rotation up to a
fixed permutation of q/k features); no learned q/k bias (the released model's ``qk_bias``); no test-time noise
injection, cache sharing or adaptive exit; ``d_ff`` defaults to ``4·h``; ``s_0 = 0`` at evaluation by default (above).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.kv_cache import KVCache
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding
from edifice.config import ArchConfig
from edifice.graphs import is_capturing
from edifice.outputs import model_output
from edifice_recurrent.configs.huginn import HuginnConfig

__all__ = ["Huginn", "HuginnState", "SandwichBlock", "sample_iterations"]

#: Standard deviation of the log-normal rate of the training-time iteration count (the paper's σ = 1/2).
ITERATION_SIGMA = 0.5


class SandwichBlock(nn.Module):
    """``x̂ = n_2(x + Attn(n_1(x)))``, ``y = n_4(x̂ + MLP(n_3(x̂)))``: Huginn's layer (§3), causal with RoPE."""

    def __init__(self, config: HuginnConfig) -> None:
        super().__init__()
        d, eps = config.d_model, config.norm_eps
        rope = RotaryEmbedding(config.head_size, base=config.rope_base)
        self.attn_norm = get_norm("rmsnorm", d, eps=eps)  # n_1
        self.attn = Attention(d, config.n_heads, head_dim=config.head_size, causal=True, rope=rope)
        self.attn_post_norm = get_norm("rmsnorm", d, eps=eps)  # n_2
        self.ffn_norm = get_norm("rmsnorm", d, eps=eps)  # n_3
        self.ffn = GatedFeedForward(d, config.ffn_hidden, activation="silu")
        self.ffn_post_norm = get_norm("rmsnorm", d, eps=eps)  # n_4
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: KVCache | None = None
    ) -> Tensor:
        """``x [B, T, d]`` -> ``[B, T, d]``; ``state`` is this layer's KV cache, updated in place."""
        a = self.attn(self.attn_norm(x), mask=mask, positions=positions, state=state)
        x = self.attn_post_norm(x + self.dropout(a))
        return self.ffn_post_norm(x + self.dropout(self.ffn(self.ffn_norm(x))))  # type: ignore[no-any-return]

    def init_state(self, batch_size: int, **kwargs: Any) -> KVCache:
        """This layer's empty KV cache (``max_len``, ``device`` and ``dtype`` pass through)."""
        return self.attn.init_state(batch_size, **kwargs)


@model_output
class HuginnState:
    """Decoding state: a KV cache per layer instance, and the next position of every row (updated in place)."""

    prelude: list[KVCache]
    """Caches of the prelude layers."""
    core: list[list[KVCache]]
    """``core[i][j]``: the cache of core layer ``j`` at iteration ``i`` (``r`` lists of ``n_layers``)."""
    coda: list[KVCache]
    """Caches of the coda layers."""
    position: Tensor
    """``[B]`` int64: the absolute position the next valid token of each sequence gets."""


def sample_iterations(mean: int, generator: torch.Generator | None = None, device: Any = None) -> int:
    """One training-time ``r ~ Poisson(e^τ) + 1`` with ``τ ~ N(log mean - σ²/2, σ)``, ``σ = 1/2`` (§3)."""
    mu = math.log(max(mean, 1)) - ITERATION_SIGMA**2 / 2
    tau = torch.normal(mu, ITERATION_SIGMA, (1,), generator=generator, device=device)
    return int(torch.poisson(tau.exp(), generator=generator)) + 1


class Huginn(SequenceBackbone):
    """Prelude -> weight-shared core block iterated ``r`` times from ``s_0`` -> coda (module doc).

    ``layers`` is the core block (``n_layers`` sandwich layers); ``prelude``, ``adapter`` and ``coda`` are the rest.
    ``norm`` is the final RMSNorm, applied to ``s_r`` and again after the coda.
    """

    config_class: ClassVar[type[ArchConfig]] = HuginnConfig
    config: HuginnConfig

    def __init__(self, config: HuginnConfig) -> None:
        super().__init__(config)
        d = config.d_model
        self.prelude = nn.ModuleList([SandwichBlock(config) for _ in range(config.prelude_layers)])
        self.adapter = nn.Linear(2 * d, d, bias=False)  # A: [s ; e] -> h
        self.coda = nn.ModuleList([SandwichBlock(config) for _ in range(config.coda_layers)])
        self.embed_scale = math.sqrt(d) if config.scale_embeddings else 1.0
        self.reset_parameters()

    # -- structure ----------------------------------------------------------------------------------------------
    def build_layer(self, index: int) -> nn.Module:
        """Core layer ``index`` (a :class:`SandwichBlock`); the core is applied ``r`` times with these weights."""
        return SandwichBlock(self.config)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm (used on ``s_r`` and after the coda)."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """Embed tokens (scaled by sqrt(d_model)) or project features ``[B, T, d_in]``."""
        h = super().embed_inputs(inputs)
        return h * self.embed_scale if self.embed_tokens is not None and self.embed_scale != 1.0 else h

    def reset_parameters(self) -> None:
        """The released model's init: truncated normal (±3 std) of std ``sqrt(2/(5h))``, smaller for outputs.

        The attention output and MLP down projections get ``std / sqrt(2 · (l_P + r̄ · l_R + l_C))``; norm gains 1.
        """
        super().reset_parameters()
        c = self.config
        std = c.init_std if c.init_std is not None else math.sqrt(2 / (5 * c.d_model))
        out_std = std / math.sqrt(2 * max(c.effective_depth, 1))
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            for block in self.blocks():
                for lin in (block.attn.o_proj, block.ffn.down_proj):
                    nn.init.trunc_normal_(lin.weight, std=out_std, a=-3 * out_std, b=3 * out_std)

    def blocks(self) -> list[SandwichBlock]:
        """Every distinct sandwich layer: prelude, core, coda."""
        return [b for group in (self.prelude, self.layers, self.coda) for b in group if isinstance(b, SandwichBlock)]

    # -- the recurrence -----------------------------------------------------------------------------------------
    def initial_state(self, e: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``s_0`` shaped like ``e [B, T, d]``: truncated ``N(0, state_std²)`` or zeros (train/eval config)."""
        kind = self.config.state_init if self.training else self.config.eval_state_init
        if kind == "zero":
            return torch.zeros_like(e)
        sigma = self.config.state_std
        s0 = torch.empty(e.shape, device=e.device, dtype=torch.float32)
        nn.init.trunc_normal_(s0, std=sigma, a=-3 * sigma, b=3 * sigma, generator=generator)
        return s0.to(e.dtype)

    def iterations(self, num_iterations: int | None, generator: torch.Generator | None = None) -> tuple[int, int]:
        """``(r without gradient, r with gradient)`` for this call (training samples ``r`` and truncates backprop)."""
        c = self.config
        if not self.training:
            return 0, c.num_iterations if num_iterations is None else num_iterations
        if num_iterations is not None:
            r = num_iterations
        elif c.iteration_sampling == "lognormal_poisson" and c.num_iterations > 0:
            device = generator.device if generator is not None else None
            r = sample_iterations(c.num_iterations, generator, device)
        else:
            r = c.num_iterations
        k = r if c.backprop_depth is None else min(c.backprop_depth, r)
        return r - k, k

    def core(
        self,
        s: Tensor,
        e: Tensor,
        caches: list[KVCache] | None = None,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """One iteration ``s_i = R(e, s_{i-1})``: the adapter on ``[s ; e]``, then the core layers."""
        h: Tensor = self.adapter(torch.cat([s, e], dim=-1))  # (B, T, d)
        for j, layer in enumerate(self.layers):
            h = self._layer(layer, h, None if caches is None else caches[j], mask, positions)
        return h

    def _run(
        self,
        inputs: Tensor,
        mask: Tensor | None,
        positions: Tensor | None,
        num_iterations: int | None,
        generator: torch.Generator | None,
        state: HuginnState | None,
    ) -> Tensor:
        """Prelude -> ``s_0`` -> core iterations -> norm -> coda -> norm, with KV caches when ``state`` is given."""
        e = self.embed_dropout(self.embed_inputs(inputs))  # (B, T, d)
        for j, layer in enumerate(self.prelude):
            e = self._layer(layer, e, None if state is None else state.prelude[j], mask, positions)
        s = self.initial_state(e, generator)  # s_0
        if state is not None:
            for caches in state.core:  # the cache fixes r: one cache set per iteration
                s = self.core(s, e, caches, mask=mask, positions=positions)
        else:
            n_frozen, n_grad = self.iterations(num_iterations, generator)
            with torch.no_grad():  # truncated backprop: the first r - k iterations carry no gradient
                for _ in range(n_frozen):
                    s = self.core(s, e, mask=mask, positions=positions)
            for _ in range(n_grad):
                s = self.core(s, e, mask=mask, positions=positions)
        y: Tensor = self.norm(s)
        for j, layer in enumerate(self.coda):
            y = self._layer(layer, y, None if state is None else state.coda[j], mask, positions)
        return self.norm(y)  # type: ignore[no-any-return]

    def _layer(
        self, layer: nn.Module, h: Tensor, cache: KVCache | None, mask: Tensor | None, positions: Tensor | None
    ) -> Tensor:
        """One sandwich layer, recomputed in the backward pass when gradient checkpointing is on (no cache)."""
        out: Tensor
        if cache is None and self.grad_checkpointing and self.training and torch.is_grad_enabled():
            out = checkpoint(layer, h, use_reentrant=False, mask=mask, positions=positions)
        else:
            out = layer(h, mask=mask, positions=positions, state=cache)
        return out

    # -- forward and decoding -----------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        num_iterations: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``x [B, T, d_in]`` or ``input_ids [B, T]`` -> ``[B, T?, d_model]`` (or logits), pooled by ``output``.

        ``num_iterations`` overrides ``r`` for this call (test-time compute); ``generator`` feeds the draws of
        ``s_0`` (and of ``r`` in training). ``attention_mask [B, T]`` marks valid positions (padding).
        """
        if num_iterations is not None and num_iterations < 0:
            raise ValueError(f"huginn: num_iterations must be >= 0, got {num_iterations}")
        self.check_inputs(x=x, input_ids=input_ids, attention_mask=attention_mask)
        inputs = input_ids if self.embed_tokens is not None else x
        assert inputs is not None
        positions = None if attention_mask is None else attention_mask.to(torch.long).cumsum(-1) - 1  # (B, T)
        h = self.pool(self._run(inputs, attention_mask, positions, num_iterations, generator, None), attention_mask)
        return self.lm_head(h) if self.lm_head is not None else h

    def init_state(  # type: ignore[override]
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        num_iterations: int | None = None,
    ) -> HuginnState:
        """Empty KV caches for every layer instance (``r = num_iterations`` core iterations, config's by default)."""
        reference = self.adapter.weight
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        r = self.config.num_iterations if num_iterations is None else num_iterations
        if r < 0:
            raise ValueError(f"huginn: num_iterations must be >= 0, got {r}")
        kw = {"max_len": max_len, "device": device, "dtype": dtype}
        return HuginnState(
            prelude=[b.init_state(batch_size, **kw) for b in self.prelude],  # type: ignore[operator]
            core=[[b.init_state(batch_size, **kw) for b in self.layers] for _ in range(r)],  # type: ignore[operator]
            coda=[b.init_state(batch_size, **kw) for b in self.coda],  # type: ignore[operator]
            position=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def step(  # type: ignore[override]
        self,
        x: Tensor,
        state: HuginnState,
        *,
        attention_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, HuginnState]:
        """Advance by ``t >= 1`` positions; returns what ``forward`` gives there (``output="all"``), state in place.

        The number of core iterations is the one ``state`` was made for (``init_state(num_iterations=...)``).
        """
        capturing = is_capturing()
        if not capturing:  # validation reads values back to the host, which a CUDA graph capture forbids
            self.check_inputs(**{self.primary_input: x, "attention_mask": attention_mask})
        if attention_mask is None:
            positions = state.position[:, None] + torch.arange(x.shape[1], device=state.position.device)  # (B, t)
            state.position.add_(x.shape[1])
        else:
            positions = state.position[:, None] + attention_mask.to(torch.long).cumsum(-1) - 1
            state.position.add_(attention_mask.sum(dim=-1))
        h = self._run(x, attention_mask, positions, None, generator, state)
        return (self.lm_head(h) if self.lm_head is not None else h), state
