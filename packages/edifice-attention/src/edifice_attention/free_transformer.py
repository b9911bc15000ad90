"""The Free Transformer: a decoder conditioned on per-token random latents learned without supervision (a CVAE).

Fleuret (2025), "The Free Transformer", FAIR at Meta, https://arxiv.org/abs/2510.17558. A decoder Transformer
whose generation is conditioned on a random state ``Z = (Z_1..Z_T)``, each ``Z_t`` one of ``C = 2^H`` values,
trained as a conditional VAE (§3.1): ``P(S) = Σ_z P(S | Z=z) P(Z=z)`` with a uniform prior, an encoder ``Q(Z | S)``
for training, and the loss (§3.1, with "free bits", Kingma et al. 2016)::

    L = CE(S | Z ~ Q(Z|S)) + 1/T Σ_t max(0, D_KL(Q(Z_t | S) || P(Z_t)) - κ)

Structure (§3.2, Algorithm 1; ``block(in_q, in_kv)`` is a block whose queries and residual come from ``in_q`` and
whose keys and values come from ``in_kv``)::

    X_0 = embed(S)
    X_n = block_n(X_{n-1}, X_{n-1})                 n = 1 .. L/2          causal
    Z   = BinaryMapper(readout(enc(ζ, X_{L/2})))    training (and the prompt's prefill)
        ~ uniform over the 2^H one-hots             generation
    R   = post_sampler_fc(Z)                        a linear map 2^H -> D
    X_{L/2+1} = block_{L/2+1}(X_{L/2}, X_{L/2} + R) causal: Z enters through keys and values only
    X_n = block_n(X_{n-1}, X_{n-1})                 n = L/2 + 2 .. L
    logits = lm_head(norm(X_L))

The encoder ``enc`` is one extra *non-causal* block of the same kind whose queries are a learned token embedding ζ
replicated over the sequence, and whose keys and values are ``X_{L/2}``; a linear readout gives ``H`` logits
``L_{t,h}`` per token. The Binary Mapper (§3.3, numbered as in arXiv v1):

* eq. (6): bits ``B_{t,h} ~ Bernoulli(σ(L_{t,h}))``, independent;
* eq. (7): ``Y_t`` the one-hot of ``d = Σ_h 2^{h-1} B_{t,h}`` (0-based codes here);
* eq. (8): ``G_{t,d} = exp Σ_h log P(B_{t,h} = U_h(d))`` (``U_h(d)`` the h-th bit of ``d``) is the probability of
  every code ``d``, and the mapper outputs ``Y_t + G_t - detach(G_t)``: the one-hot forward, the gradient of the
  code probabilities backward (straight-through). :func:`binary_mapper`, :func:`code_log_probs`.

As the bits are independent under Q and the prior is uniform, ``D_KL(Q(Z_t|S) || U) = H log 2 - H(Q(Z_t|S)) =
Σ_h [log 2 + p log p + (1-p) log(1-p)]``, ``p = σ(L_{t,h})`` (:func:`kl_to_uniform`; the test checks it against the
sum over all ``2^H`` codes); :func:`free_bits_kl` applies the threshold ``κ = free_bits · ln 2`` per token and
averages over the valid tokens.

API. ``forward`` takes ``z`` (codes ``[B, T]``) to condition on a given Z; otherwise ``latent="posterior"`` (the
default in training) draws Z from the encoder and returns the free-bits KL as ``aux_loss``, and ``latent="prior"``
(the default in eval) draws it uniformly. :meth:`FreeTransformer.loss` is the training objective (cross-entropy plus
KL, with the parts). ``step`` decodes with a KV cache; each new token's ``Z`` is given (``z``) or drawn from the
prior (or, ``latent="posterior"``, by the encoder over the new positions: the paper's prompt prefill).
:meth:`FreeTransformer.generate` samples tokens with the prompt's Z from the encoder and the new tokens' from the
prior, as §3.2 prescribes.

Prior draws (our choice; the paper only says "uniformly"): code ``Z_t`` of a row is a counter-based hash of the row's
seed and the token's position (:func:`prior_codes`), so that a forward and a step-by-step decode draw the same Z for
the same positions without threading a generator state; a row's seed is drawn from ``generator`` (by ``forward`` and
``init_state``, one int per row) and is 0 without one, so eval is deterministic by default and
``init_state(generator=g)`` + ``step`` reproduces ``forward(generator=g')`` for equally seeded ``g, g'``.

Deviations and choices where the paper is silent: ``post_sampler_fc`` has no bias (one row per code: a bias is
redundant with one-hot inputs); the encoder's readout has one; ζ starts N(0, init_std) like the embeddings; the
encoder block is built like the decoder's (RoPE when the decoder has it, no window); ``n_layers`` may be odd (the
injection block is ``n_layers // 2``, 0-based); mixture-of-experts FFNs are not offered.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceOutput, SequenceState, _positions_from_mask
from edifice.blocks.kv_cache import KVCache
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.graphs import is_capturing
from edifice.inputs import validate_inputs
from edifice.outputs import model_output
from edifice_attention.configs.free_transformer import Z_INPUT, FreeTransformerConfig
from edifice_attention.decoder_only import DecoderOnly

__all__ = [
    "FreeTransformer",
    "FreeTransformerLoss",
    "FreeTransformerState",
    "KVInputAttention",
    "binary_mapper",
    "code_bits",
    "code_log_probs",
    "free_bits_kl",
    "kl_to_uniform",
    "prior_codes",
    "sample_codes",
]

#: ``build_mixer``/``build_layer`` index that builds the encoder's block (non-causal attention).
ENCODER = -1
_MASK32 = 0xFFFFFFFF


# -- the Binary Mapper (§3.3) and the KL (§3.1) ---------------------------------------------------------------------
def code_bits(num_bits: int, device: torch.device | str | None = None) -> Tensor:
    """``[2^H, H]`` float 0/1: row ``d`` holds the bits ``U_h(d) = (d >> h) & 1`` of code ``d`` (h = 0 lowest)."""
    codes = torch.arange(2**num_bits, device=device)
    return ((codes[:, None] >> torch.arange(num_bits, device=device)) & 1).float()


def code_log_probs(logits: Tensor) -> Tensor:
    """``log G_{t,d} = Σ_h log P(B_{t,h} = U_h(d))`` of every code (eq. 8): ``[..., H] -> [..., 2^H]`` in fp32.

    With ``log σ(L) - log σ(-L) = L``: ``log G_d = Σ_h log σ(-L_h) + Σ_h U_h(d) L_h``.
    """
    L = logits.float()
    bits = code_bits(L.shape[-1], L.device)  # (C, H)
    return F.logsigmoid(-L).sum(-1, keepdim=True) + L @ bits.T


def sample_codes(logits: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Eqs. (6)-(7): ``B_{t,h} = [u_{t,h} < σ(L_{t,h})]`` with ``u ~ U[0, 1)``; the code ``Σ_h 2^h B_{t,h}`` (int64)."""
    H = logits.shape[-1]
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    bits = (u < torch.sigmoid(logits.float())).long()
    return (bits << torch.arange(H, device=logits.device)).sum(-1)


def binary_mapper(logits: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The Binary Mapper: sampled codes ``[...]`` and ``Y + (G - detach(G))`` ``[..., 2^H]`` (eqs. 6-8, fp32).

    The second output equals the one-hot ``Y`` of the codes exactly (``G - detach(G)`` is exactly zero) and has the
    gradient of the code probabilities ``G``.
    """
    codes = sample_codes(logits, generator=generator)
    G = code_log_probs(logits).exp()  # (..., C) probabilities of every code
    Y = F.one_hot(codes, G.shape[-1]).to(G.dtype)
    return codes, Y + (G - G.detach())


def kl_to_uniform(logits: Tensor) -> Tensor:
    """``D_KL(Q(Z_t|S) || U(2^H))`` per token ``[..., H] -> [...]`` (fp32): ``Σ_h log 2 + p log p + (1-p) log(1-p)``."""
    L = logits.float()
    p = torch.sigmoid(L)
    return (math.log(2.0) + p * F.logsigmoid(L) + (1 - p) * F.logsigmoid(-L)).sum(-1)


def free_bits_kl(kl: Tensor, kappa: float, mask: Tensor | None = None) -> Tensor:
    """``1/T Σ_t max(0, KL_t - κ)`` (§3.1), averaged over the valid tokens of ``kl [B, T]`` (``mask`` True = valid)."""
    excess = (kl - kappa).clamp(min=0.0)
    if mask is None:
        return excess.mean()
    weights = mask.to(excess.dtype)
    return (excess * weights).sum() / weights.sum().clamp(min=1.0)


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2^32`` for ``0 <= x, c < 2^32`` in int64 without overflow (16-bit halves)."""
    high = ((x >> 16) * c) & 0xFFFF
    return ((high << 16) + (x & 0xFFFF) * c) & _MASK32


def _mix32(x: Tensor) -> Tensor:
    """A bijective 32-bit integer hash (Wellons' "lowbias32" constants) on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def prior_codes(seed: Tensor, positions: Tensor, num_bits: int) -> Tensor:
    """Uniform prior draws: ``Z`` of row ``b`` at position ``p`` is ``hash(seed_b, p) mod 2^H`` ``[B, T]`` (int64).

    ``seed [B]`` int64, ``positions [T]`` or ``[B, T]`` (absolute, as the KV cache sees them). A counter-based draw:
    the same (seed, position) always gives the same code, whichever call draws it.
    """
    key = _mix32((seed.long() & _MASK32) ^ 0x9E3779B9)[:, None]  # (B, 1)
    h = _mix32(key ^ (positions.long() & _MASK32))  # (B, T)
    h = _mix32(h ^ 0x85EBCA6B)
    codes: Tensor = h & (2**num_bits - 1)
    return codes


def _seeds(batch_size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """One prior seed per row: drawn from ``generator``, or 0 without one."""
    if generator is None:
        return torch.zeros(batch_size, dtype=torch.long, device=device)
    return torch.randint(0, 2**31 - 1, (batch_size,), generator=generator, device=generator.device).to(device)


# -- modules --------------------------------------------------------------------------------------------------------
class KVInputAttention(Attention):
    """Self-attention whose keys and values may come from a second input at the same positions: ``block(in_q, in_kv)``.

    Queries from ``x``, keys and values from ``kv`` (default ``x``: plain :class:`~edifice.blocks.attention.Attention`).
    The injection block reads ``kv = Norm(X + R)``; the encoder reads queries ``Norm(ζ)`` and ``kv = Norm(X_{L/2})``.
    """

    def forward(
        self,
        x: Tensor,
        *,
        kv: Tensor | None = None,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
    ) -> Tensor:
        """Attend queries of ``x [B, T, d_model]`` to keys/values of ``kv [B, T, d_model]`` (and the cache's)."""
        if kv is None:
            return super().forward(x, mask=mask, positions=positions, state=state)
        if kv.shape != x.shape:
            raise ValueError(f"KVInputAttention: kv expected the shape of x {list(x.shape)}, got {list(kv.shape)}")
        self._check_call(x, mask, positions, state)
        q = self._split(self.q_proj, x, self.n_heads, self.q_norm)  # (B, Hq, T, D)
        k = self._split(self.k_proj, kv, self.n_kv_heads, self.k_norm)  # (B, Hk, T, D)
        v = self._split(self.v_proj, kv, self.n_kv_heads, None)  # (B, Hk, T, D)
        q, k = self._rotate(x, positions, q, k)
        k, v, masking = self._fetch(k, v, mask=mask, positions=positions, state=state)
        return self._attend(q, k, v, **masking)


def _kv_input(block: nn.Module, source: Tensor) -> Tensor:
    """What ``block``'s attention reads keys and values from: ``Norm(source)`` (pre-norm) or ``source`` (post-norm)."""
    assert isinstance(block, TransformerBlock)
    out: Tensor = block.mixer_norm(source) if block.pre_norm else source
    return out


@model_output
@dataclasses.dataclass
class FreeTransformerState(SequenceState):
    """Decoding state: the per-layer KV caches, the next position of every row and its prior seed."""

    seed: Tensor
    """``[B]`` int64: each row's seed of the prior draws (:func:`prior_codes`)."""


@model_output
class FreeTransformerLoss:
    """The training objective and its parts (all scalars)."""

    loss: Tensor
    """``ce + kl``: the quantity to minimise."""
    ce: Tensor
    """Mean cross-entropy of the targets given Z from the encoder."""
    kl: Tensor
    """The free-bits KL term ``1/T Σ_t max(0, KL_t - κ)`` (as added to ``ce``)."""
    kl_raw: Tensor
    """Mean ``D_KL(Q(Z_t|S) || P(Z_t))`` per valid token in nats, before the threshold (for monitoring)."""


class FreeTransformer(DecoderOnly):
    """The ``decoder_only`` stack with a latent ``Z`` added to the keys/values of block ``n_layers // 2`` (see module).

    Extra parameters: ``zeta`` (ζ), ``encoder`` (one non-causal :class:`~edifice.blocks.transformer.TransformerBlock`),
    ``encoder_readout`` (``d_model -> H``) and ``post_sampler_fc`` (``2^H -> d_model``, no bias).
    """

    config_class: ClassVar[type[ArchConfig]] = FreeTransformerConfig
    config: FreeTransformerConfig

    def __init__(self, config: FreeTransformerConfig) -> None:
        super().__init__(config)
        c = config
        self.returns_aux_loss = True
        self.zeta = nn.Parameter(torch.empty(c.d_model))
        self.encoder = self.build_layer(ENCODER)
        self.encoder_readout = nn.Linear(c.d_model, c.num_latent_bits)
        self.post_sampler_fc = nn.Linear(c.num_codes, c.d_model, bias=False)
        self.reset_parameters()

    @property
    def injection_layer(self) -> int:
        """Index of the block whose keys and values receive ``R = post_sampler_fc(Z)``."""
        return self.config.injection_layer

    def build_mixer(self, index: int) -> nn.Module:
        """Plain attention, except at the injection block (keys/values from ``X + R``) and in the non-causal encoder."""
        if index == ENCODER:
            return KVInputAttention(**{**self.attention_kwargs(), "causal": False, "window": None})
        if index == self.config.injection_layer:
            return KVInputAttention(**self.attention_kwargs())
        return super().build_mixer(index)

    def reset_parameters(self) -> None:
        """decoder_only's N(0, init_std) for linear and embedding weights; ζ drawn like an embedding row."""
        super().reset_parameters()
        if hasattr(self, "zeta"):
            nn.init.normal_(self.zeta, mean=0.0, std=self.config.init_std)

    def check_inputs(self, **inputs: Any) -> dict[str, int]:
        """The spec's inputs, and ``z`` (int64 codes ``[B, T]`` in ``[0, 2^H)``) when given, in the standard format."""
        if inputs.get("z") is None:
            inputs.pop("z", None)
            return super().check_inputs(**inputs)
        if torch.compiler.is_compiling():
            return {}
        spec = dataclasses.replace(self.spec, inputs={**self.spec.inputs, "z": Z_INPUT})
        weight = self.post_sampler_fc.weight
        return validate_inputs(spec, self.config, inputs, device=weight.device, dtype=weight.dtype)

    # -- the latent -------------------------------------------------------------------------------------------------
    def encode(self, h: Tensor, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """The encoder's bit logits ``L [B, T, H]`` from the first half's output ``h = X_{L/2} [B, T, d_model]``.

        One non-causal block with queries ζ (replicated over the sequence) and keys/values ``X_{L/2}`` (padded keys
        masked), then the linear readout (§3.2).
        """
        B, T, _ = h.shape
        queries = self.zeta.to(h.dtype).expand(B, T, -1)
        y, _ = self.encoder(queries, mask=mask, positions=positions, kv=_kv_input(self.encoder, h))
        logits: Tensor = self.encoder_readout(y)
        return logits

    def embed_codes(self, codes: Tensor) -> Tensor:
        """``R = post_sampler_fc(one_hot(codes))`` as a row lookup: ``[B, T]`` -> ``[B, T, d_model]``."""
        return F.embedding(codes, self.post_sampler_fc.weight.t())

    def _latent(
        self,
        h: Tensor,
        mask: Tensor | None,
        positions: Tensor | None,
        z: Tensor | None,
        latent: str | None,
        generator: torch.Generator | None,
        seed: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``R [B, T, d_model]``, the free-bits KL and the mean raw KL (zeros unless Z comes from the encoder)."""
        zero = h.new_zeros((), dtype=torch.float32)
        if z is not None:
            return self.embed_codes(z), zero, zero
        mode = latent if latent is not None else ("posterior" if self.training else "prior")
        if mode not in ("posterior", "prior"):
            raise ValueError(f"free_transformer: latent must be 'posterior', 'prior' or None, got {latent!r}")
        if mode == "posterior":
            logits = self.encode(h, mask, positions)  # (B, T, H)
            _, soft = binary_mapper(logits, generator=generator)  # (B, T, C): one-hot forward, G's gradient
            r: Tensor = self.post_sampler_fc(soft.to(h.dtype))
            kl = kl_to_uniform(logits)  # (B, T)
            kappa = self.config.free_bits * math.log(2.0)
            raw = free_bits_kl(kl, 0.0, mask) if mask is not None else kl.mean()
            return r, free_bits_kl(kl, kappa, mask), raw
        B, T, _ = h.shape
        if seed is None:
            seed = _seeds(B, generator, h.device)
        if positions is None:
            positions = torch.arange(T, device=h.device)
        return self.embed_codes(prior_codes(seed, positions, self.config.num_latent_bits)), zero, zero

    # -- forward ----------------------------------------------------------------------------------------------------
    def _run(
        self,
        inputs: Tensor,
        mask: Tensor | None,
        positions: Tensor | None,
        states: list[Any] | None,
        z: Tensor | None,
        latent: str | None,
        generator: torch.Generator | None,
        seed: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Algorithm 1: embed, the first half, Z, the injection block (keys/values ``X + R``), the second half."""
        h = self.embed_dropout(self.embed_positions(self.embed_inputs(inputs), positions))
        kl = kl_raw = h.new_zeros((), dtype=torch.float32)
        for index, layer in enumerate(self.layers):
            extra: dict[str, Any] = {}
            if index == self.injection_layer:
                r, kl, kl_raw = self._latent(h, mask, positions, z, latent, generator, seed)
                extra["kv"] = _kv_input(layer, h + r)  # in_kv = X_{L/2} + R; in_q = X_{L/2}
            state = None if states is None else states[index]
            if state is None and self.grad_checkpointing and self.training and torch.is_grad_enabled():
                out = checkpoint(layer, h, mask=mask, positions=positions, use_reentrant=False, **extra)
            else:
                out = layer(h, mask=mask, positions=positions, state=state, **extra)
            h = out[0]
        return h, kl, kl_raw

    def forward(
        self,
        x: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        z: Tensor | None = None,
        latent: str | None = None,
        generator: torch.Generator | None = None,
    ) -> SequenceOutput:
        """Run on ``x [B, T, d_in]`` or ``input_ids [B, T]`` conditioned on ``z [B, T]`` or a drawn Z.

        ``latent`` picks the draw when ``z`` is None: ``"posterior"`` (the encoder and Binary Mapper; the default in
        training) or ``"prior"`` (uniform, :func:`prior_codes`; the default in eval). ``generator`` feeds the bit
        draws of the posterior, or the rows' prior seeds. Returns logits (or hidden states) and ``aux_loss``, the
        free-bits KL of the posterior's Z (0 otherwise).
        """
        self.check_inputs(x=x, input_ids=input_ids, attention_mask=attention_mask, z=z)
        out, _ = self._forward(x, input_ids, attention_mask, z=z, latent=latent, generator=generator)
        return out

    def _forward(
        self,
        x: Tensor | None,
        input_ids: Tensor | None,
        attention_mask: Tensor | None,
        *,
        z: Tensor | None,
        latent: str | None,
        generator: torch.Generator | None,
    ) -> tuple[SequenceOutput, Tensor]:
        inputs = input_ids if self.embed_tokens is not None else x
        assert inputs is not None
        positions = None if attention_mask is None else _positions_from_mask(attention_mask)  # (B, T)
        h, kl, kl_raw = self._run(inputs, attention_mask, positions, None, z, latent, generator, None)
        out = self._output(self.pool(self.norm(h), attention_mask), kl)
        assert isinstance(out, SequenceOutput)
        return out, kl_raw

    def loss(self, batch: Mapping[str, Tensor], *, generator: torch.Generator | None = None) -> FreeTransformerLoss:
        """The training objective (§3.1): cross-entropy with Z from the encoder, plus the free-bits KL.

        ``batch`` holds ``input_ids`` (or ``x``), optionally ``attention_mask`` and ``labels [B, T]`` (the target of
        each position, -100 ignored); without labels, the next token of ``input_ids`` is the target of each position.
        """
        if self.lm_head is None or self.config.output != "all":
            raise ValueError("free_transformer: loss needs vocab_size (logits) and output='all'")
        mask = batch.get("attention_mask")
        inputs = {k: batch[k] for k in ("x", "input_ids") if k in batch}
        self.check_inputs(**inputs, attention_mask=mask)
        out, kl_raw = self._forward(
            inputs.get("x"), inputs.get("input_ids"), mask, z=None, latent="posterior", generator=generator
        )
        assert out.logits is not None and out.aux_loss is not None
        logits = out.logits
        labels = batch.get("labels")
        if labels is None:
            ids = batch.get("input_ids")
            if ids is None:
                raise ValueError("free_transformer: loss needs labels [B, T] when the input is x (no input_ids)")
            if mask is not None:
                ids = ids.masked_fill(~mask, -100)
            logits, labels = logits[:, :-1], ids[:, 1:]
        elif mask is not None:
            labels = labels.masked_fill(~mask, -100)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return FreeTransformerLoss(loss=ce + out.aux_loss, ce=ce, kl=out.aux_loss, kl_raw=kl_raw)

    # -- decoding ---------------------------------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> FreeTransformerState:
        """Empty KV caches (static with ``max_len``) and each row's prior seed (from ``generator``, else 0)."""
        base = super().init_state(batch_size, max_len=max_len, device=device, dtype=dtype)
        seed = _seeds(batch_size, generator, base.position.device)
        return FreeTransformerState(layers=base.layers, position=base.position, seed=seed)

    def step(  # type: ignore[override]
        self,
        x: Tensor,
        state: FreeTransformerState,
        *,
        attention_mask: Tensor | None = None,
        z: Tensor | None = None,
        latent: str | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[SequenceOutput, FreeTransformerState]:
        """Advance by ``t >= 1`` positions; returns what ``forward`` returns there (same ``z``, or the same prior draw).

        ``z [B, t]`` gives the new positions' codes; otherwise they come from the prior at the rows' seeds and
        absolute positions, or with ``latent="posterior"`` from the encoder run over these ``t`` positions (the
        paper's prompt prefill; ``generator`` feeds its bits).
        """
        if not is_capturing():  # validation reads values back to the host, which a CUDA graph capture forbids
            self.check_inputs(**{self.primary_input: x, "attention_mask": attention_mask, "z": z})
        if attention_mask is None:
            t = x.shape[1]
            positions = state.position[:, None] + torch.arange(t, device=state.position.device)  # (B, t)
            state.position.add_(t)
        else:
            positions = state.position[:, None] + _positions_from_mask(attention_mask)  # (B, t)
            state.position.add_(attention_mask.sum(dim=-1))
        h, kl, _ = self._run(x, attention_mask, positions, state.layers, z, latent, generator, state.seed)
        out = self._output(self.norm(h), kl)
        assert isinstance(out, SequenceOutput)
        return out, state

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        prompt_latent: str = "posterior",
    ) -> Tensor:
        """Sample ``max_new_tokens`` after ``input_ids [B, T]`` -> ``[B, T + max_new_tokens]``.

        §3.2: the prompt's Z comes from the encoder during the KV-cache prefill (``prompt_latent="prior"`` draws it
        from the prior instead), every new token's Z from the uniform prior. ``temperature=0`` is greedy.
        """
        if self.lm_head is None:
            raise ValueError("free_transformer: generate needs vocab_size (token logits)")
        if max_new_tokens < 0 or temperature < 0:
            raise ValueError(
                f"free_transformer: need max_new_tokens >= 0 and temperature >= 0, got {max_new_tokens}, {temperature}"
            )
        B, T = input_ids.shape
        state = self.init_state(B, max_len=T + max_new_tokens, generator=generator)
        out, _ = self.step(input_ids, state, latent=prompt_latent, generator=generator)
        tokens = [input_ids]
        for _ in range(max_new_tokens):
            assert out.logits is not None
            logits = out.logits[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            tokens.append(nxt)
            out, _ = self.step(nxt, state, latent="prior")
        return torch.cat(tokens, dim=1)
