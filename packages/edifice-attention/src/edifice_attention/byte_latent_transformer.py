"""Byte Latent Transformer (BLT): a byte-level LM whose big transformer runs over dynamically sized patches.

Pagnoni et al. (2024), "Byte Latent Transformer: Patches Scale Better Than Tokens", https://arxiv.org/abs/2412.09871.
Bytes are grouped into patches -- every ``patch_size`` bytes (§2.1) or where a small byte LM is unsure of the next
byte (entropy patching, §2.3: ``H(x_t) > θ_g`` or ``H(x_t) - H(x_{t-1}) > θ_r``). A light local encoder embeds the
bytes (byte embedding plus hash n-gram embeddings, §3.2.1: ``e_i = x_i + sum_n E^hash_n(Hash(g_{i,n}))`` for
``n = 3..8``), runs a few causal transformer layers, and pools each patch into ``k`` vectors by cross-attention whose
queries start as the max-pool of the patch's bytes (§3.2.2). The latent transformer is causal over patches (§3.1).
The local decoder cross-attends each byte to the latent output of the patch that last closed -- at or before that
byte -- and runs byte-level transformer layers before the next-byte head (§3.3). Byte ``t``'s logits thus depend on
bytes ``<= t`` only.

Where the paper is silent this follows the authors' code (github.com/facebookresearch/blt, ``bytelatent/model``)
and transformers' port (``transformers.models.blt``, whose checkpoints :func:`from_transformers` converts):

* the hash gives the oldest byte of an n-gram the power ``a^0`` (the paper writes the newest first);
* a cross-attention returns ``x + o`` and its caller adds ``x`` again (``LocalEncoder.apply_cross_attention``,
  ``LocalDecoder.forward``): the residual stream is doubled at each cross-attention; queries and keys/values are
  RMS-normalised before the projections; patch queries are pooled once, at the first cross-attention layer;
* patch ``j``'s ``k`` slots are one ``byte_dim -> k * byte_dim`` projection of its pooled bytes; the latent input is
  the ``k`` slots concatenated (projected to ``latent_dim`` when ``k * byte_dim != latent_dim``); the decoder
  projects latent outputs to ``k`` slots the same way; the latent transformer has no final norm;
* bytes 0 and 1 always open patches (``find_entropy_patch_start_ids``); fixed patching starts patches at bytes 0 and
  ``1 + j * patch_size`` (the authors pad the first static patch with ``patch_size - 1`` BOE bytes to the same end;
  we drop the padding bytes);
* RoPE (θ = 500000) on every self-attention; the local layers attend a sliding window (``local_window``).

Deliberate deviations: RoPE uses the rotate-half layout (the converter permutes the q/k rows of the interleaved
checkpoints, the same function); the patch axis has one slot per patch of the longest sequence in the batch (``T``
slots under ``torch.compile``, so shapes stay static); no BOE/EOS handling in the latent transformer (transformers
has none either). Decoding: :meth:`ByteLatentTransformer.step` consumes bytes one at a time, steps the latent
transformer when a patch closes (its KV write is masked to the rows whose patch closed, so there is no host sync)
and reproduces ``forward`` exactly.

Legend: B batch, T bytes, P patches, k slots per patch, D byte_dim, G latent_dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import CheckpointError, Model, model_output
from edifice.blocks.attention import Attention, CrossAttention
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.kv_cache import DynamicKVCache, KVCache, StaticKVCache
from edifice.blocks.norms import RMSNorm
from edifice.blocks.rope import RotaryEmbedding
from edifice.blocks.transformer import TransformerBlock
from edifice_attention._blt_patching import cross_mask, entropy, hash_ngram_ids, patch_starts, rule_starts
from edifice_attention._hf_convert import deinterleave_rows
from edifice_attention.configs.byte_latent_transformer import ByteLatentTransformerConfig
from edifice_attention.configs.decoder_only import DecoderOnlyConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["BltCrossAttention", "BltLatents", "BltOutput", "BltState", "ByteLatentTransformer", "from_transformers"]


@model_output
class BltOutput:
    """Next-byte logits and the patch each byte belongs to."""

    logits: Tensor
    """``[B, T, vocab_size]`` next-byte logits."""
    patch_ids: Tensor
    """``[B, T]`` int64: index of the patch holding each byte (patches are numbered from 0 in each sequence)."""


@model_output
class BltLatents:
    """The patch-level tensors of :meth:`ByteLatentTransformer.encode` (the patch axis is the batch's longest)."""

    latent_patches: Tensor
    """``[B, P, latent_dim]``: the encoder's patch representations, the latent transformer's input."""
    latent_output: Tensor
    """``[B, P, latent_dim]``: the latent transformer's output."""
    patch_ids: Tensor
    """``[B, T]`` int64 patch of each byte."""
    num_patches: Tensor
    """``[B]`` int64 patches of each sequence (slots beyond it are padding)."""


@model_output
class BltState:
    """Decoding state of :meth:`ByteLatentTransformer.step`; every tensor is updated in place or replaced."""

    position: Tensor  # () int64: bytes consumed
    history: Tensor  # (B, n_max - 1) int64: the last bytes, for the hash n-grams
    next_start: Tensor  # (B,) bool: the next byte opens a patch
    natural_start: Tensor  # (B,) int64: position of the last rule (unsplit) patch start
    patch_start: Tensor  # (B,) int64: position of the first byte of the open patch
    n_patches: Tensor  # (B,) int64: patches opened
    n_closed: Tensor  # (B,) int64: patches closed (stepped through the latent transformer)
    prev_entropy: Tensor  # (B,) fp32: entropy of the previous byte (monotonic rule)
    pooled: Tensor  # (B, D): running max of the open patch's bytes at the first cross-attention layer
    latent: Tensor  # (B, G): latent output of the last closed patch
    encoder: list[Any]  # KV caches of the encoder layers
    encoder_cross: list[Any]  # cached cross-attention keys/values of every byte, per encoder cross layer
    latent_layers: list[Any]  # KV caches of the latent transformer (one slot per byte step, written when closing)
    decoder: list[Any]  # KV caches of the decoder layers
    entropy_model: Any  # the entropy model's state (None for fixed patching)


class BltCrossAttention(CrossAttention):
    """BLT's cross-attention: ``x + o`` with ``o = W_o Attn(W_q RMSNorm(x), W_k RMSNorm(c), W_v RMSNorm(c))``.

    The authors normalise the whole query and context vectors before projecting (``cross_attn_norm_q``/``_kv``)
    and return the residual sum themselves; ``allowed [B, 1, Tq, S]`` restricts each query to its patch.
    """

    def __init__(self, d_model: int, n_heads: int, *, n_kv_heads: int | None, eps: float, dropout: float) -> None:
        super().__init__(d_model, n_heads, n_kv_heads=n_kv_heads, dropout=dropout)
        self.query_norm = RMSNorm(d_model, eps)
        self.context_norm = RMSNorm(d_model, eps)

    def reset_parameters(self) -> None:
        """Projections and both norms."""
        super().reset_parameters()
        self.query_norm.reset_parameters()
        self.context_norm.reset_parameters()

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``[B, Hk, S, D]`` of ``context [B, S, d_model]``."""
        c = self.context_norm(context)
        return self._split(self.k_proj, c, self.n_kv_heads, None), self._split(self.v_proj, c, self.n_kv_heads, None)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None = None) -> Tensor:
        """``x + o`` for queries ``x [B, Tq, d_model]`` over projected ``k, v``; ``allowed`` masks the scores."""
        q = self._split(self.q_proj, self.query_norm(x), self.n_heads, None)  # (B, Hq, Tq, Dh)
        return x + self._attend(q, k, v, attn_mask=allowed)

    def forward(
        self, x: Tensor, context: Tensor, *, context_mask: Tensor | None = None, allowed: Tensor | None = None
    ) -> Tensor:
        """``x + o`` over ``context [B, S, d_model]``; ``allowed [B, 1, Tq, S]`` (or ``context_mask [B, S]``)."""
        if allowed is None and context_mask is not None:
            allowed = context_mask[:, None, None, :]
        k, v = self.project_context(context)
        return self.attend(x, k, v, allowed)


def _local_block(
    dim: int, heads: int, kv_heads: int | None, ff: int, window: int | None, base: float, cfg: Any
) -> TransformerBlock:
    """A pre-norm RMSNorm / RoPE self-attention / SwiGLU block (Llama layout), causal."""
    attention = Attention(
        dim,
        heads,
        n_kv_heads=kv_heads,
        window=window,
        rope=RotaryEmbedding(dim // heads, base=base),
        dropout=cfg.dropout,
    )
    ffn = GatedFeedForward(dim, ff, activation="silu")
    return TransformerBlock(dim, attention, ffn, norm="rmsnorm", norm_eps=cfg.norm_eps)


def entropy_model_config(config: ByteLatentTransformerConfig) -> DecoderOnlyConfig:
    """The ``decoder_only`` config of the built-in entropy model (a small byte LM, §2.3)."""
    return DecoderOnlyConfig(
        d_model=config.entropy_dim,
        n_layers=config.entropy_layers,
        n_heads=config.entropy_heads,
        d_ff=config.ff(config.entropy_dim, config.entropy_ff),
        vocab_size=config.vocab_size,
        window=config.entropy_window,
        rope_base=config.entropy_rope_base,
        norm_eps=config.norm_eps,
    )


class ByteLatentTransformer(Model):
    """BLT: ``input_ids [B, T]`` (byte ids) -> :class:`BltOutput` (next-byte logits, patch of each byte)."""

    config_class = ByteLatentTransformerConfig
    config: ByteLatentTransformerConfig

    def __init__(self, config: ByteLatentTransformerConfig, *, entropy_model: nn.Module | None = None) -> None:
        super().__init__(config)
        c = config
        D, G, k = c.byte_dim, c.latent_dim, c.cross_attn_k
        # §3.2.1: byte embeddings plus one fused table holding every (hash function, n-gram size) table
        self.embed_tokens = nn.Embedding(c.vocab_size, D)
        self.hash_embed = nn.Embedding(c.n_hash_tables * c.hash_vocab, D)
        self.embed_dropout = nn.Dropout(c.dropout)

        def local(ff: int) -> TransformerBlock:
            return _local_block(D, c.n_heads, c.n_kv_heads, ff, c.local_window, c.rope_base, c)

        def cross() -> BltCrossAttention:
            return BltCrossAttention(D, c.n_heads, n_kv_heads=c.n_kv_heads, eps=c.norm_eps, dropout=c.dropout)

        # §3.2: local encoder, cross-attention pooling bytes -> k slots per patch
        self.encoder_layers = nn.ModuleList(local(c.ff(D, c.encoder_ff)) for _ in range(c.n_encoder_layers))
        self.encoder_patch_proj = nn.Linear(D, D * k, bias=False)
        self.encoder_cross = nn.ModuleList(cross() for _ in self._encoder_cross_layers())
        # §3.1: latent transformer over patches (full causal attention, no final norm)
        self.latent_in_proj = nn.Linear(k * D, G, bias=False) if k * D != G else None
        self.latent_layers = nn.ModuleList(
            _local_block(G, c.latent_heads, c.latent_kv_heads, c.ff(G, c.latent_ff), None, c.rope_base, c)
            for _ in range(c.n_latent_layers)
        )
        # §3.3: local decoder, cross-attention patches -> bytes before its layers
        self.decoder_patch_proj = nn.Linear(G, D * k, bias=False)
        self.decoder_cross = nn.ModuleList(cross() for _ in self._decoder_cross_layers())
        self.decoder_layers = nn.ModuleList(local(c.ff(D, c.decoder_ff)) for _ in range(c.n_decoder_layers))
        self.decoder_norm = RMSNorm(D, c.norm_eps)
        self.lm_head = nn.Linear(D, c.vocab_size, bias=False)
        # §2.3: the entropy model (any byte LM mapping input_ids to logits); None for fixed patching
        if c.patching == "entropy" and entropy_model is None:
            entropy_model = DecoderOnly(entropy_model_config(c))
        self.entropy_model = entropy_model if c.patching == "entropy" else None
        self.reset_parameters()

    # -- layout ------------------------------------------------------------------------------------------------------
    def _encoder_cross_layers(self) -> list[int]:
        n = self.config.n_encoder_layers
        return list(range(n)) if self.config.encoder_cross_all_layers else [n - 1]

    def _decoder_cross_layers(self) -> list[int]:
        n = self.config.n_decoder_layers
        return list(range(n)) if self.config.decoder_cross_all_layers else [0]

    def reset_parameters(self) -> None:
        """The authors' initialisation: truncated normals (±3σ) with σ = fan_in^-1/2; embeddings σ = byte_dim^-1/2."""
        std = self.config.byte_dim**-0.5
        for emb in (self.embed_tokens, self.hash_embed):
            nn.init.trunc_normal_(emb.weight, std=std, a=-3 * std, b=3 * std)
        for name, module in self.named_modules():
            if name.startswith("entropy_model"):
                continue
            if isinstance(module, nn.Linear):
                s = module.in_features**-0.5
                nn.init.trunc_normal_(module.weight, std=s, a=-3 * s, b=3 * s)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
        reset = getattr(self.entropy_model, "reset_parameters", None)
        if callable(reset):
            reset()

    # -- pieces ------------------------------------------------------------------------------------------------------
    def _embed(self, window: Tensor) -> Tensor:
        """Byte + hash n-gram embeddings of the last ``T`` bytes of ``window [B, n_max - 1 + T]`` (§3.2.1)."""
        c = self.config
        T = window.shape[1] - (max(c.hash_sizes) - 1)
        ids = hash_ngram_ids(window, c.hash_sizes, c.hash_functions, c.hash_vocab)  # (B, T, tables)
        e = self.embed_tokens(window[:, -T:]) + self.hash_embed(ids).sum(dim=2)
        return self.embed_dropout(e)  # type: ignore[no-any-return]

    def _entropy_logits(self, input_ids: Tensor) -> Tensor:
        assert self.entropy_model is not None
        out = self.entropy_model(input_ids=input_ids)
        return out if isinstance(out, Tensor) else out.logits

    def patch_starts(self, input_ids: Tensor) -> Tensor:
        """Patch starts ``[B, T + 1]`` bool over positions ``0 .. T`` (``T``: the next byte), see :mod:`._blt_patching`.

        Fixed patching starts at bytes 0 and ``1 + j * patch_size``; entropy patching at 0, 1 and wherever the
        entropy rule fires; ``max_patch_length`` splits long patches. Computed without gradients (discrete).
        """
        c = self.config
        B, T = input_ids.shape
        pos = torch.arange(T + 1, device=input_ids.device)
        with torch.no_grad():
            if c.patching == "fixed":
                natural = ((pos == 0) | ((pos - 1) % c.patch_size == 0)).expand(B, T + 1)
            else:
                H = entropy(self._entropy_logits(input_ids))  # (B, T)
                first = (pos[:2] >= 0).expand(B, 2)
                natural = torch.cat([first, rule_starts(H, c.entropy_rule, c.entropy_threshold)], dim=1)
            return patch_starts(natural, c.max_patch_length)

    def _run(self, input_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(logits, patch_ids, latent_patches, latent_output, num_patches)`` of the whole sequence."""
        c = self.config
        B, T = input_ids.shape
        k, D = c.cross_attn_k, c.byte_dim
        counts = self.patch_starts(input_ids).long().cumsum(dim=1)  # (B, T + 1) patches opened up to each position
        patch_ids = counts[:, :T] - 1  # (B, T) encoder patch of each byte
        # byte t reads the patch that closed last at or before t: the one before the patch of byte t + 1 (§3.3)
        decoder_ids = counts[:, 1:] - 2  # (B, T)
        num_patches = counts[:, T - 1]
        P = T if torch.compiler.is_compiling() else int(num_patches.max())

        # local encoder (§3.2) with cross-attention pooling (§3.2.2)
        h = self._embed(F.pad(input_ids, (max(c.hash_sizes) - 1, 0)))  # (B, T, D)
        enc_mask = cross_mask(patch_ids, P, k, patches_as_queries=True)  # (B, 1, P*k, T)
        cross_at = dict(zip(self._encoder_cross_layers(), self.encoder_cross, strict=True))
        slots: Tensor | None = None
        for i, layer in enumerate(self.encoder_layers):
            h = self._layer(layer, h)
            if i in cross_at:
                if slots is None:  # queries initialised by max-pooling each patch's bytes
                    index = patch_ids[..., None].expand(B, T, D)
                    pooled = h.new_zeros(B, P, D).scatter_reduce(1, index, h, "amax", include_self=False)
                    slots = self.encoder_patch_proj(pooled).view(B, P * k, D)  # (B, P*k, D)
                slots = slots + cross_at[i](slots, h, allowed=enc_mask)  # cross returns slots + o
        assert slots is not None
        latent_patches = self._latent_input(slots.view(B, P, k * D))  # (B, P, G)
        # latent transformer (§3.1): causal over patches
        g = latent_patches
        for layer in self.latent_layers:
            g = self._layer(layer, g)
        # local decoder (§3.3)
        context = self.decoder_patch_proj(g).view(B, P * k, D)
        dec_mask = cross_mask(decoder_ids, P, k, patches_as_queries=False)  # (B, 1, T, P*k)
        logits = self._decode(h, context, dec_mask)
        return logits, patch_ids, latent_patches, g, num_patches

    def _layer(self, layer: nn.Module, x: Tensor, **kwargs: Any) -> Tensor:
        if self.grad_checkpointing and self.training and not kwargs:
            out = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
        else:
            out = layer(x, **kwargs)
        return out[0]  # type: ignore[no-any-return]

    def _latent_input(self, slots: Tensor) -> Tensor:
        return self.latent_in_proj(slots) if self.latent_in_proj is not None else slots

    def _decode(
        self, h: Tensor, context: Tensor, allowed: Tensor | None, step: tuple[Tensor, list[Any]] | None = None
    ) -> Tensor:
        """Decoder layers over byte states ``h [B, t, D]`` attending ``context`` slots; returns logits.

        ``step`` is ``(positions, per-layer KV caches)`` when decoding.
        """
        cross_at = dict(zip(self._decoder_cross_layers(), self.decoder_cross, strict=True))
        for i, layer in enumerate(self.decoder_layers):
            if i in cross_at:
                h = h + cross_at[i](h, context, allowed=allowed)  # cross returns h + o
            if step is None:
                h = self._layer(layer, h)
            else:
                h = self._layer(layer, h, positions=step[0], state=step[1][i])
        return self.lm_head(self.decoder_norm(h))  # type: ignore[no-any-return]

    # -- API ---------------------------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor) -> BltOutput:
        """``input_ids [B, T]`` -> :class:`BltOutput` with ``logits [B, T, vocab_size]`` and ``patch_ids [B, T]``."""
        self.check_inputs(input_ids=input_ids)
        logits, patch_ids, *_ = self._run(input_ids)
        return BltOutput(logits=logits, patch_ids=patch_ids)

    def encode(self, input_ids: Tensor) -> BltLatents:
        """The patch-level view: latent transformer inputs and outputs, each byte's patch, patches per sequence."""
        self.check_inputs(input_ids=input_ids)
        _, patch_ids, latent_patches, latent_output, num_patches = self._run(input_ids)
        return BltLatents(latent_patches, latent_output, patch_ids, num_patches)

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Next-byte cross-entropy of ``batch['input_ids']``."""
        ids = batch["input_ids"]
        logits = self(ids).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    # -- decoding ----------------------------------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> BltState:
        """An empty state; ``max_len`` preallocates every cache (the latent one too: one slot per byte)."""
        c = self.config
        ref = self.embed_tokens.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        B = batch_size

        def caches(layers: nn.ModuleList) -> list[Any]:
            blocks: list[TransformerBlock] = list(layers)  # type: ignore[arg-type]
            return [block.init_state(B, max_len=max_len, device=device, dtype=dtype) for block in blocks]

        def cross_cache(module: BltCrossAttention) -> KVCache:
            if max_len is None:
                return DynamicKVCache.empty(B, module.n_kv_heads, module.head_dim, device=device, dtype=dtype)
            return StaticKVCache.empty(B, module.n_kv_heads, module.head_dim, max_len, device=device, dtype=dtype)

        entropy_state = None
        if self.entropy_model is not None:
            init = getattr(self.entropy_model, "init_state", None)
            if not callable(init):
                raise TypeError(
                    f"{c.arch}: step needs an entropy model with init_state/step; {type(self.entropy_model).__name__}"
                    " has none (decode by recomputation with forward instead)"
                )
            entropy_state = init(B, max_len=max_len, device=device, dtype=dtype)

        def zeros(*shape: int, kind: torch.dtype = torch.long) -> Tensor:
            return torch.zeros(shape, dtype=kind, device=device)

        return BltState(
            position=zeros(),
            history=zeros(B, max(c.hash_sizes) - 1),
            next_start=torch.ones(B, dtype=torch.bool, device=device),
            natural_start=zeros(B),
            patch_start=zeros(B),
            n_patches=zeros(B),
            n_closed=zeros(B),
            prev_entropy=zeros(B, kind=torch.float32),
            pooled=zeros(B, c.byte_dim, kind=dtype),
            latent=zeros(B, c.latent_dim, kind=dtype),
            encoder=caches(self.encoder_layers),
            encoder_cross=[cross_cache(m) for m in self.encoder_cross],  # type: ignore[arg-type]
            latent_layers=caches(self.latent_layers),
            decoder=caches(self.decoder_layers),
            entropy_model=entropy_state,
        )

    def step(self, input_ids: Tensor, state: BltState) -> tuple[BltOutput, BltState]:
        """Consume ``t >= 1`` bytes ``[B, t]`` one by one; returns their :class:`BltOutput` and the updated state."""
        self.check_inputs(input_ids=input_ids)
        logits, patch_ids = [], []
        for j in range(input_ids.shape[1]):
            out = self._step_byte(input_ids[:, j : j + 1], state)
            logits.append(out.logits)
            patch_ids.append(out.patch_ids)
        return BltOutput(torch.cat(logits, dim=1), torch.cat(patch_ids, dim=1)), state

    def _step_byte(self, x: Tensor, state: BltState) -> BltOutput:
        """One byte ``x [B, 1]``: patch bookkeeping, encoder, latent step where a patch closes, decoder."""
        c = self.config
        B = x.shape[0]
        k, D = c.cross_attn_k, c.byte_dim
        t = state.position  # () int64
        positions = t.view(1)
        # the byte opens a patch if the previous byte decided so (always for bytes 0 and 1)
        opens = state.next_start
        state.n_patches.add_(opens.long())
        state.patch_start.copy_(torch.where(opens, t, state.patch_start))
        patch_id = state.n_patches - 1  # (B,)

        # does this byte close its patch, i.e. does byte t + 1 open one? (§2)
        if c.patching == "fixed":
            natural = (t % c.patch_size == 0).expand(B)
        else:
            assert self.entropy_model is not None
            out = self.entropy_model.step(x, state.entropy_model)[0]  # type: ignore[operator]
            H = entropy(out if isinstance(out, Tensor) else out.logits)[:, -1]  # (B,)
            if c.entropy_rule == "global":
                fires = H.gt(c.entropy_threshold)
            else:
                fires = (H - state.prev_entropy > c.entropy_threshold) | (t == 1)
            natural = fires | (t == 0)
            state.prev_entropy.copy_(H)
        closes = natural
        if c.max_patch_length is not None:
            closes = natural | ((t + 1 - state.natural_start) % c.max_patch_length == 0)
        state.natural_start.copy_(torch.where(natural, t + 1, state.natural_start))

        # local encoder, one byte
        window = torch.cat([state.history, x], dim=1)
        state.history.copy_(window[:, 1:])
        h = self._embed(window)  # (B, 1, D)
        cross_at = dict(zip(self._encoder_cross_layers(), range(len(self.encoder_cross)), strict=True))
        first_cross = min(cross_at)
        for i, layer in enumerate(self.encoder_layers):
            h = self._layer(layer, h, positions=positions, state=state.encoder[i])
            if i in cross_at:
                j = cross_at[i]
                module: BltCrossAttention = self.encoder_cross[j]  # type: ignore[assignment]
                kv = module.project_context(h)
                state.encoder_cross[j].update(*kv, positions)
                if i == first_cross:
                    running = torch.maximum(state.pooled, h[:, 0])
                    state.pooled.copy_(torch.where(opens[:, None], h[:, 0], running))

        # close: pool the patch by cross-attention over its bytes and step the latent transformer (masked write)
        slots = self.encoder_patch_proj(state.pooled).view(B, k, D)
        pools: list[BltCrossAttention] = list(self.encoder_cross)  # type: ignore[arg-type]
        for j, pool in enumerate(pools):
            cache = state.encoder_cross[j]
            inside = cache.valid & (cache.positions >= state.patch_start[:, None])  # (B, L)
            slots = slots + pool.attend(slots, cache.keys, cache.values, inside[:, None, None, :])
        g = self._latent_input(slots.reshape(B, 1, k * D))
        latent_positions = state.n_closed[:, None]  # (B, 1)
        for i, layer in enumerate(self.latent_layers):
            g = self._layer(layer, g, mask=closes[:, None], positions=latent_positions, state=state.latent_layers[i])
        state.latent.copy_(torch.where(closes[:, None], g[:, 0], state.latent))
        state.n_closed.add_(closes.long())
        state.next_start.copy_(closes)

        # local decoder: attend the k slots of the last closed patch
        context = self.decoder_patch_proj(state.latent).view(B, k, D)
        logits = self._decode(h, context, None, (positions, state.decoder))
        state.position.add_(1)
        return BltOutput(logits=logits, patch_ids=patch_id[:, None])

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_bytes: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The prompt ``[B, T]`` and ``max_new_bytes`` more, greedy (``temperature=0``) or sampled, by :meth:`step`."""
        state = self.init_state(input_ids.shape[0], max_len=input_ids.shape[1] + max_new_bytes)
        out, state = self.step(input_ids, state)
        pieces = [input_ids]
        last = out.logits[:, -1]
        for _ in range(max_new_bytes):
            if temperature > 0:
                probs = torch.softmax(last.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            else:
                nxt = last.argmax(dim=-1, keepdim=True)
            pieces.append(nxt)
            out, state = self.step(nxt, state)
            last = out.logits[:, -1]
        return torch.cat(pieces, dim=1)


# -- transformers converter ------------------------------------------------------------------------------------------
_LAYER = {
    "self_attn.q_proj": "mixer.q_proj",
    "self_attn.k_proj": "mixer.k_proj",
    "self_attn.v_proj": "mixer.v_proj",
    "self_attn.o_proj": "mixer.o_proj",
    "mlp.gate_proj": "ffn.gate_proj",
    "mlp.up_proj": "ffn.up_proj",
    "mlp.down_proj": "ffn.down_proj",
    "input_layernorm": "mixer_norm",
    "post_attention_layernorm": "ffn_norm",
}
_CROSS = {
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "o_proj": "o_proj",
    "q_norm": "query_norm",
    "k_norm": "context_norm",
}
_TOP = {
    "model.local_encoder.embed_tokens": "embed_tokens",
    "model.encoder_hash_tok_embedding": "hash_embed",
    "model.local_encoder.patch_embedding_projection": "encoder_patch_proj",
    "model.global_transformer.token_embedding_projection": "latent_in_proj",
    "model.local_decoder.patch_embedding_projection": "decoder_patch_proj",
    "model.local_decoder.norm": "decoder_norm",
    "lm_head": "lm_head",
    "model.patcher.embed_tokens": "entropy_model.embed_tokens",
    "model.patcher.norm": "entropy_model.norm",
    "model.patcher.lm_head": "entropy_model.lm_head",
}
_STACKS = {
    "model.local_encoder.layers": "encoder_layers",
    "model.global_transformer.layers": "latent_layers",
    "model.local_decoder.layers": "decoder_layers",
    "model.patcher.layers": "entropy_model.layers",
    "model.local_encoder.cross_attn_layers": "encoder_cross",
    "model.local_decoder.cross_attn_layers": "decoder_cross",
}


def _theta(sub: Any) -> float:
    params = getattr(sub, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(sub, "rope_theta", 10000.0)))


def blt_config(hf: Any, **overrides: Any) -> ByteLatentTransformerConfig:
    """The config of a transformers ``BltConfig`` (its encoder, decoder, global and patcher sub-configs)."""
    enc, dec, glob, pat = hf.encoder_config, hf.decoder_config, hf.global_config, hf.patcher_config
    if enc.hidden_size != dec.hidden_size or enc.num_attention_heads != dec.num_attention_heads:
        raise CheckpointError("BLT converter: encoder and decoder must share hidden_size and num_attention_heads")
    if enc.cross_attn_all_layers:
        raise CheckpointError(
            "BLT converter: encoder cross_attn_all_layers=True is pooled again at every layer by transformers but "
            "once by the authors (and here); no released checkpoint uses it"
        )
    if pat.num_key_value_heads not in (None, pat.num_attention_heads):
        raise CheckpointError("BLT converter: a patcher with grouped key/value heads is not supported")
    entropy = bool(hf.patch_in_forward) and hf.patching_mode == "entropy"
    fields: dict[str, Any] = {
        "vocab_size": hf.vocab_size,
        "byte_dim": enc.hidden_size,
        "latent_dim": glob.hidden_size,
        "n_encoder_layers": enc.num_hidden_layers,
        "n_latent_layers": glob.num_hidden_layers,
        "n_decoder_layers": dec.num_hidden_layers,
        "n_heads": enc.num_attention_heads,
        "n_kv_heads": enc.num_key_value_heads,
        "latent_heads": glob.num_attention_heads,
        "latent_kv_heads": glob.num_key_value_heads,
        "encoder_ff": enc.intermediate_size,
        "decoder_ff": dec.intermediate_size,
        "latent_ff": glob.intermediate_size,
        "local_window": hf.local_attention_window_len,
        "cross_attn_k": hf.cross_attn_k,
        "encoder_cross_all_layers": bool(enc.cross_attn_all_layers),
        "decoder_cross_all_layers": bool(dec.cross_attn_all_layers),
        "hash_sizes": tuple(hf.encoder_hash_byte_group_size),
        "hash_functions": hf.encoder_hash_byte_group_nb_functions,
        "hash_vocab": hf.encoder_hash_byte_group_vocab,
        # without entropy patching transformers makes every byte a patch: fixed patching with stride 1
        "patching": "entropy" if entropy else "fixed",
        "patch_size": 1 if not entropy else (hf.patch_size or 4),
        "entropy_threshold": float(hf.patching_threshold),
        "max_patch_length": hf.max_patch_length,
        "entropy_dim": pat.hidden_size,
        "entropy_layers": pat.num_hidden_layers,
        "entropy_heads": pat.num_attention_heads,
        "entropy_ff": pat.intermediate_size,
        "entropy_window": pat.sliding_window,
        "entropy_rope_base": _theta(pat),
        "rope_base": _theta(enc),
        "norm_eps": float(enc.rms_norm_eps),
        "dropout": float(enc.dropout or 0.0),
    }
    fields.update(overrides)
    return ByteLatentTransformerConfig(**fields)


def map_blt_state_dict(state_dict: Mapping[str, Tensor], config: ByteLatentTransformerConfig) -> dict[str, Tensor]:
    """Rename transformers BLT weights; q/k rows of self-attention go from interleaved RoPE to rotate-half."""
    heads = {
        "encoder_layers": config.byte_dim // config.n_heads,
        "decoder_layers": config.byte_dim // config.n_heads,
        "latent_layers": config.latent_dim // config.latent_heads,
        "entropy_model.layers": config.entropy_dim // config.entropy_heads,
    }
    out: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if "rotary_emb" in key:
            continue
        module, _, leaf = key.rpartition(".")
        value = tensor.detach().clone()
        if module in _TOP:
            if _TOP[module].startswith("entropy_model") and config.patching != "entropy":
                continue
            out[f"{_TOP[module]}.{leaf}"] = value
            continue
        for prefix, target in _STACKS.items():
            if module.startswith(prefix + "."):
                index, _, rest = module[len(prefix) + 1 :].partition(".")
                table = _CROSS if target.endswith("cross") else _LAYER
                if rest not in table or (target.startswith("entropy_model") and config.patching != "entropy"):
                    unknown.append(key) if rest not in table else None
                    break
                if rest in ("self_attn.q_proj", "self_attn.k_proj"):
                    size = heads[target]
                    value = deinterleave_rows(value, 0, size, size)
                out[f"{target}.{index}.{table[rest]}.{leaf}"] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"BLT converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    return out


def from_transformers(source: Any, **overrides: Any) -> ByteLatentTransformer:
    """Convert a transformers ``BltForCausalLM`` (or ``(BltConfig, state_dict)``) to ``byte_latent_transformer``."""
    if isinstance(source, tuple):
        hf, state_dict = source
    else:
        hf, state_dict = source.config, source.state_dict()
    config = blt_config(hf, **overrides)
    weights = map_blt_state_dict(state_dict, config)
    with torch.device("meta"):
        model = ByteLatentTransformer(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"BLT converter: the mapped weights do not fit byte_latent_transformer: {exc}") from None
    return model
