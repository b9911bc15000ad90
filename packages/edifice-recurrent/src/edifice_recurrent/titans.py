"""Titans (MAC, MAG, MAL): a neural long-term memory that learns to memorise at test time, beside attention.

Behrouz, Zhong & Mirrokni (2025), "Titans: Learning to Memorize at Test Time", https://arxiv.org/abs/2501.00663.
The long-term memory ``M`` is a network (an MLP with ``L_M = memory_depth`` layers, one per head) whose weights are
trained online on an associative loss; a token's *surprise* is the gradient of that loss::

    k_t = x_t W_K,  v_t = x_t W_V,  q_t = x_t W_Q                        (eqs. 11, 15)
    ℓ(M_{t-1}; x_t) = ‖M_{t-1}(k_t) - v_t‖²₂                              (eq. 12)
    S_t = η_t S_{t-1} - θ_t ∇ℓ(M_{t-1}; x_t)                              past + momentary surprise (eqs. 10, 14)
    M_t = (1 - α_t) M_{t-1} + S_t                                         forgetting (eq. 13)
    y_t = M_t*(q_t)                                                        retrieval without update (eq. 15)

with data-dependent gates per head and token: learning rate ``θ_t = memory_lr σ(x_t w_θ) / head_dim``, momentum
``η_t = σ(x_t w_η)`` and forgetting ``α_t = σ(x_t w_α)`` (§3.1). Training is chunked (§3.2, "Parallelizing the long-term
memory training"): inside a chunk of ``b = mini_batch_size`` tokens every gradient is taken at the memory of the
chunk's start, ``∇ℓ(M_{t'}; x_t)``, and the momentum and forgetting recurrences are linear in those gradients, so
the whole chunk is a few matrix products -- :func:`edifice.ops.memory_gd` (its dual form: no per-token weight is
materialised). ``step`` runs the same recurrence token by token from a constant-size state (the memory's weights at
the chunk start and now, the momentum), and reproduces ``forward``.

Architecture (``variant``), with persistent memory (§3.3, eq. 19) ``x̃ = [p_1 … p_{N_p}] ‖ x`` (learnable tokens):

* MAC, "memory as context" (§4.1): per segment ``S`` of ``window_size`` positions, the memory of the segment's start
  answers the segment's queries, attention reads that retrieved history beside the segment, and the memory then
  learns the attention's output::

      h = M*_{s-1}(q),  q = ℓ2(SiLU(S W_Q))                                retrieval without an update
      y = Attn([p ‖ h ‖ S])                                                causal inside the segment
      M_s = M_{s-1}(y)                                                     the memory's update from y
      o = W_O (RMSNorm(y) ⊙ σ(RMSNorm(M*_s(y))) ⊙ SiLU(S W_G))              ⊗ as MAG's gate; §4.4's gate

* MAG, "memory as a gate" (§4.2), the default: the two branches side by side on ``x̃``::

      y = SW-Attn*(x̃)                                                     sliding-window attention; the persistent
                                                                            tokens stay visible to every query
      o = W_O (RMSNorm(y) ⊙ σ(RMSNorm(M(x̃))) ⊙ SiLU(x W_G))               the memory gates the attention

* MAL, "memory as a layer" (§4.3): the attention reads the memory's output::

      y = M(x̃)                                                            the memory over x̃
      o = W_O (RMSNorm(SW-Attn*(RMSNorm(y))) ⊙ SiLU(x W_G))                the persistent positions' read-outs
                                                                            M(p) stay visible to every query

following §4.4's details: the memory's q, k, v pass a depthwise causal convolution and SiLU, q and k are
ℓ2-normalised, and the output is normalised and gated by a linear layer of the mixer's input, ``SiLU(x W_G)``, before
the final projection ("normalization and gating with a linear layer before the final output projection", as in
Mehta et al. 2023; ``output_gate``: MAG's and MAC's outputs are already normalised, MAL's gets an RMSNorm). Each
block is pre-norm residual: ``x + Mixer(RMSNorm(x))``, ``x + SwiGLU(RMSNorm(x))``.

MAC as a causal model: ``h_j`` depends on ``x_j``, so the retrieved and the input token of position ``j`` are
interleaved in the attention and a query at ``i`` sees both for every ``j <= i`` of its segment (seeing all of ``h``
would leak later tokens); the memory learns ``y`` token by token in chunks of ``mini_batch_size`` (segments are whole
chunks), so ``M*_s(y_i)`` has read ``y`` up to ``i`` only. The forward pass runs segment by segment (each segment
needs the memory the previous one left), one chunked :func:`~edifice.ops.memory_gd` call each; ``step`` keeps the
memory of the segment's start in its state. The state of every variant is constant-size: the memory, a cache of
``window_size`` attention positions (``2 window_size`` keys for MAC) and, for MAL, the normalised read-outs of the
persistent tokens (which do not depend on the input). MAG is the default: its gate exposes the memory's output
directly, and its forward pass is one op call.

Padding: valid tokens are moved to the front of each sequence before the layer (and back after), so chunks and
positions start at the first valid token as without padding; ``step`` skips padded tokens.

Initialisation (the paper gives none): linear weights ``N(0, 0.02²)``; the memory ``M_0 ~ N(0, 1/D_in)`` per layer
(fan-in scaling: q and k have unit norm, and smaller weights leave the memory's LayerNorm a near-constant input that
amplifies every step); persistent tokens ``N(0, 0.02²)``; the gate biases start at ``θ: σ(0)``, ``η: σ(0) = 0.5`` and
``α: σ(-4) ≈ 0.018`` (slow forgetting).

Deviations: the memory is ``x + LN(MLP(x))`` by default (``memory_norm``), where the paper specifies an MLP of
``L_M`` layers (§3.1): the residual and the LayerNorm come from TTT's inner model and MIRAS' deep memories, and keep
a deep memory trainable by the inner steps (``memory_norm=False`` is the paper's bare MLP). The output gate's
activation is SiLU (§4.4 names none; Mamba's and fla's gated output norms use it). The gates are per-head scalars
(the paper allows channel-wise ones); MAL's RMSNorm before the attention is this implementation's pre-norm (the
paper writes ``SW-Attn(M(x̃))``); MAC's ``⊗`` is MAG's normalised sigmoid gate, its retrieval query has no
convolution, the retrieved tokens need ``n_heads · head_dim == d_model`` (they join the input tokens, as the paper's
d-to-d memory's do), and the memory learns only the input positions' outputs ``y_t`` (not those of the persistent and
retrieved tokens).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.kv_cache import SlidingWindowKVCache
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding, apply_rotary
from edifice.config import ArchConfig
from edifice.ops.memory_gd import memory_apply
from edifice.outputs import model_output
from edifice_recurrent._test_time import (
    FastWeightBackbone,
    FastWeightMemory,
    FastWeightState,
    ShortConvs,
    compact,
    l2_normalize,
    restore,
)
from edifice_recurrent.configs.titans import TitansConfig

__all__ = ["VARIANTS", "Titans", "TitansMixer", "TitansState"]

#: How the memory meets the attention: "mac" (memory as context, §4.1), "mag" (as a gate, §4.2), "mal" (as a layer,
#: §4.3).
VARIANTS = ("mac", "mag", "mal")

#: Initial bias of the forgetting gate: α = σ(-4) ≈ 0.018.
FORGET_BIAS = -4.0


@model_output
class TitansState:
    """Decoding state of a :class:`TitansMixer` layer: constant size, updated in place by each step."""

    conv: Tensor
    """The memory's q, k, v convolution history ``[B, 3·H·D, conv_size - 1]``."""
    memory: FastWeightState
    """The long-term memory: weights at the chunk start and now, the momentum (surprise), tokens seen."""
    attention: SlidingWindowKVCache
    """The last ``window_size`` keys and values of the attention branch (persistent tokens are not cached)."""
    prefix: Tensor | None = None
    """MAL: the persistent tokens' normalised memory read-outs ``[B, N_p, H·D]``, the attention's fixed prefix."""
    segment: list[Tensor] | None = None
    """MAC: the memory ``M_{s-1}`` at the start of each row's current segment, which answers its retrievals."""


class TitansMixer(nn.Module):
    """The Titans MAG or MAL token mixer ``[B, T, d_model] -> [B, T, d_model]`` (module doc), with ``init_state``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        *,
        variant: str = "mag",
        memory_depth: int = 2,
        memory_hidden: int | None = None,
        memory_norm: bool = True,
        momentum: bool = True,
        memory_lr: float = 1.0,
        mini_batch_size: int = 16,
        n_persistent: int = 4,
        window_size: int = 64,
        conv_size: int = 4,
        rope: bool = True,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        init_std: float = 0.02,
        output_gate: bool = True,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"TitansMixer: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        width = n_heads * head_dim
        if variant == "mac" and (width != d_model or window_size % mini_batch_size):
            raise ValueError(
                "TitansMixer: MAC needs n_heads * head_dim == d_model (retrieved tokens join the input) and "
                f"window_size divisible by mini_batch_size (segments of whole chunks), got {n_heads} * {head_dim}, "
                f"d_model {d_model}, window_size {window_size}, mini_batch_size {mini_batch_size}"
            )
        self.variant, self.n_heads, self.head_dim, self.width = variant, n_heads, head_dim, width
        self.momentum, self.memory_lr, self.window_size, self.init_std = momentum, memory_lr, window_size, init_std
        self.persistent = nn.Parameter(torch.empty(n_persistent, d_model))  # p_1 … p_{N_p}
        # Long-term memory branch: q, k, v with convolution and SiLU (§4.4), gates θ, α, η per head.
        self.mem_qkv = nn.Linear(d_model, 3 * width, bias=False)
        self.mem_convs = ShortConvs([3 * width], conv_size)  # one depthwise convolution over q, k and v
        self.gate_proj = nn.Linear(d_model, 3 * n_heads, bias=True)  # θ | α | η
        self.memory = FastWeightMemory(
            n_heads,
            head_dim,
            head_dim,
            depth=memory_depth,
            hidden=memory_hidden,
            bias=False,
            activation="gelu",
            norm=memory_norm,
            residual=memory_norm,
            norm_eps=norm_eps,
            init_std=None,  # N(0, 1/D_in): the keys have unit norm
            chunk_size=mini_batch_size,
            momentum=momentum,
            loss="l2",
        )
        self.mem_norm = get_norm("rmsnorm", width, eps=norm_eps)
        # MAC's retrieval query q_t = x_t W_Q, SiLU and ℓ2 norm as the memory's own queries (§4.1, §4.4).
        self.retrieve_q = nn.Linear(d_model, width, bias=False) if variant == "mac" else None
        # Attention branch: on x̃ (MAG), on [p ‖ h ‖ x] per segment (MAC), on the memory's normalised read-out (MAL).
        self.attn_qkv = nn.Linear(width if variant == "mal" else d_model, 3 * width, bias=False)
        self.rope = RotaryEmbedding(head_dim, base=rope_theta) if rope else None
        self.attn_norm = get_norm("rmsnorm", width, eps=norm_eps) if variant != "mal" else None
        # §4.4: normalisation and a gate from a linear layer of the input before the output projection. MAG's and
        # MAC's outputs are normalised by their memory gate already; MAL's attention output gets its own norm.
        self.out_gate = nn.Linear(d_model, width, bias=False) if output_gate else None
        self.out_norm = get_norm("rmsnorm", width, eps=norm_eps) if output_gate and variant == "mal" else None
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Persistent tokens ``N(0, init_std²)``, gate biases ``(0, FORGET_BIAS, 0)``, the memory's own init."""
        nn.init.normal_(self.persistent, std=self.init_std)
        with torch.no_grad():
            bias = self.gate_proj.bias
            bias.zero_()
            bias[self.n_heads : 2 * self.n_heads] = FORGET_BIAS
        self.memory.reset_parameters()

    # -- the long-term memory branch ----------------------------------------------------------------------------
    def memory_inputs(self, x: Tensor, conv_state: Tensor | None = None, valid: Tensor | None = None) -> dict[str, Any]:
        """q, k, v ``[B, T, H, D]`` and the op's gates ``[B, T, H]`` for the memory branch of ``x [B, T, d_model]``."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        (qkv,) = self.mem_convs([self.mem_qkv(x)], conv_state, valid)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k, v = (F.silu(t).view(B, T, H, D) for t in (q, k, v))
        q, k = l2_normalize(q), l2_normalize(k)
        work = torch.promote_types(x.dtype, torch.float32)
        g_theta, g_alpha, g_eta = self.gate_proj(x).to(work).chunk(3, dim=-1)  # (B, T, H) each
        # ℓ = ‖M(k) - v‖² has gradient 2(M(k) - v)·∂M: the op's loss is ½‖·‖², so its learning rate is 2θ.
        gates: dict[str, Any] = {
            "lr": 2.0 * self.memory_lr * torch.sigmoid(g_theta) / D,
            "retain": 1.0 - torch.sigmoid(g_alpha),  # 1 - α_t
        }
        if self.momentum:
            gates["momentum"] = torch.sigmoid(g_eta)
        return {"q": q, "k": k, "v": v, **gates}

    def _memory(self, x: Tensor, state: TitansState | None, valid: Tensor | None) -> Tensor:
        """The memory's read-out ``[B, T, H·D]`` (state: the recurrent form, else the chunked one)."""
        B, T, _ = x.shape
        inputs = self.memory_inputs(x, None if state is None else state.conv, valid)
        if state is None:
            if valid is not None:
                inputs["lr"] = inputs["lr"] * valid[..., None]
            o = self.memory(**inputs)
        else:
            o = self.memory.step(state.memory, **inputs, valid=valid)
        out: Tensor = o.reshape(B, T, self.width)
        return out

    # -- the sliding-window attention branch --------------------------------------------------------------------
    def _attention(
        self, x: Tensor, prefix: Tensor, positions: Tensor, state: TitansState | None, valid: Tensor | None
    ) -> Tensor:
        """SW-Attn* over ``[prefix ‖ x]``: ``x [B, T, d]`` at ``positions [B, T]`` -> ``[B, T, H·D]``.

        ``prefix [B, N_p, d]`` is the persistent tokens (MAG) or their memory read-outs (MAL): its keys and values
        are not rotated (they have no position) and every query sees them.
        """
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        n_p = prefix.shape[1]
        prefixed = torch.cat([prefix, x], 1)  # (B, N_p + T, d)
        q, k, v = (t.view(B, n_p + T, H, D).transpose(1, 2) for t in self.attn_qkv(prefixed).chunk(3, -1))
        pk, pv, q, k, v = k[:, :, :n_p], v[:, :, :n_p], q[:, :, n_p:], k[:, :, n_p:], v[:, :, n_p:]
        if self.rope is not None:
            cos, sin = self.rope(positions)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if state is None:
            k_pos, key_valid = positions, torch.ones(B, T, dtype=torch.bool, device=x.device)
        else:
            k, v, k_pos, key_mask = state.attention.update_and_fetch(k, v, positions, valid)
            key_valid = key_mask[:, 0, 0]
        dist = positions[:, :, None] - k_pos[:, None, :]  # (B, T, L) query minus key position
        if self.variant == "mac":  # causal inside the segment of window_size positions, nothing before it
            same = positions[:, :, None] // self.window_size == k_pos[:, None, :] // self.window_size
            allowed = key_valid[:, None, :] & (dist >= 0) & same
        else:
            allowed = key_valid[:, None, :] & (dist >= 0) & (dist < self.window_size)
        always = torch.ones(B, T, n_p, dtype=torch.bool, device=x.device)
        mask = torch.cat([always, allowed], -1)[:, None]  # (B, 1, T, N_p + L)
        out = ops.sdpa(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2), attn_mask=mask)  # (B, H, T, D)
        return out.transpose(1, 2).reshape(B, T, self.width)

    # -- the layer ----------------------------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TitansState:
        """The state after the persistent tokens: the memory has read them (MAG, MAL); the attention cache is empty."""
        device = self.o_proj.weight.device if device is None else device
        dtype = self.o_proj.weight.dtype if dtype is None else dtype
        n_p = self.persistent.shape[0]
        mac = self.variant == "mac"
        slots = (2 if mac else 1) * self.window_size  # MAC caches a retrieved and an input token per position
        state = TitansState(
            conv=self.mem_convs.init_state(batch_size, device=device, dtype=dtype),
            memory=self.memory.init_state(batch_size, device=device),
            attention=SlidingWindowKVCache.empty(
                batch_size, self.n_heads, self.head_dim, slots, device=device, dtype=dtype
            ),
        )
        if mac:  # the persistent tokens are attention context only (§4.1): the memory has read nothing yet
            state.segment = [w.clone() for w in state.memory.current]
            return state
        prefix = self.persistent.to(device=device, dtype=dtype).expand(batch_size, -1, -1)
        read = self._memory(prefix, state, None) if n_p else prefix.new_zeros(batch_size, 0, self.width)
        if self.variant == "mal":  # x̃ = [p ‖ x]: the memory reads the persistent tokens first
            state.prefix = self.mem_norm(read)
        return state

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: TitansState | None = None,
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask [B, T]`` marks valid tokens; ``state`` is updated."""
        if self.variant == "mac":
            return self._mac(x, mask, positions, state)
        B, T, _ = x.shape
        n_p = self.persistent.shape[0]
        persistent = self.persistent.to(x.dtype).expand(B, -1, -1)
        order, read_prefix = None, None
        if state is None:
            x, order = compact(x, mask)  # valid tokens first, so chunks and positions start at the first token
            valid = None if mask is None or order is None else torch.gather(mask, 1, order)
            prefix_valid = None if valid is None else F.pad(valid, (n_p, 0), value=True)
            read = self._memory(torch.cat([persistent, x], 1), None, prefix_valid)  # M(x̃), x̃ = [p ‖ x]
            read_prefix, y_mem = read[:, :n_p], read[:, n_p:]
            positions, mask = torch.arange(T, device=x.device).expand(B, T), None  # compacted: causality hides pads
        else:
            if positions is None:
                raise ValueError("TitansMixer: positions [B, t] are required with a state (the absolute index of x)")
            positions = positions.expand(B, T)
            y_mem = self._memory(x, state, mask)
        if self.variant == "mag":  # the memory gates the attention over x̃
            out = self._project(self._gate(self._attention(x, persistent, positions, state, mask), y_mem), x)
        else:  # MAL: the attention reads the memory's read-out, M(p) as its persistent prefix
            prefix = state.prefix if state is not None else self.mem_norm(read_prefix)
            if prefix is None:
                raise ValueError("TitansMixer: a MAL state needs its prefix (build the state with init_state)")
            y = self._attention(self.mem_norm(y_mem), prefix, positions, state, mask)
            out = self._project(y if self.out_norm is None else self.out_norm(y), x)
        return restore(out, order)

    def _gate(self, y: Tensor, read: Tensor) -> Tensor:
        """MAG's and MAC's ``RMSNorm(y) ⊙ σ(RMSNorm(read))`` (eq. 26's ⊗): the memory's read-out gates ``y``."""
        assert self.attn_norm is not None
        out: Tensor = self.attn_norm(y) * torch.sigmoid(self.mem_norm(read))
        return out

    def _project(self, z: Tensor, x: Tensor) -> Tensor:
        """``W_O (z ⊙ SiLU(x W_G))``: §4.4's linear gate of the input ``x [B, T, d]``, then the output projection."""
        if self.out_gate is not None:
            z = z * F.silu(self.out_gate(x))
        out: Tensor = self.o_proj(z)
        return out

    # -- MAC, memory as context (§4.1) --------------------------------------------------------------------------
    def _retrieve(self, x: Tensor, memory: list[Tensor | None]) -> Tensor:
        """``h = M*(q)`` for ``x [B, t, d]``: the memory read without an update, ``q = ℓ2(SiLU(x W_Q))`` (§4.1)."""
        assert self.retrieve_q is not None
        B, t, _ = x.shape
        q = l2_normalize(F.silu(self.retrieve_q(x)).view(B, t, self.n_heads, self.head_dim))
        work = next(w for w in memory if w is not None).dtype
        spec: dict[str, Any] = {k: v.to(work) if isinstance(v, Tensor) else v for k, v in self.memory._spec().items()}
        h = memory_apply(memory, q.transpose(1, 2).to(work), **spec)  # (B, H, t, D)
        return h.transpose(1, 2).reshape(B, t, self.width).to(x.dtype)

    def _segment_attention(
        self, h: Tensor, x: Tensor, positions: Tensor, state: TitansState | None, valid: Tensor | None
    ) -> Tensor:
        """``y = Attn([p ‖ h ‖ x])`` at the inputs' positions (§4.1), causal inside the segment.

        The retrieved ``h_j`` and the input ``x_j`` share position ``j``, interleaved, so a query at ``i`` sees both for
        every ``j <= i`` of its segment (``h_j`` depends on ``x_j``: a later one would leak the future).
        """
        B, t, d = x.shape
        pairs = torch.stack([h, x], 2).reshape(B, 2 * t, d)  # h_0, x_0, h_1, x_1, ...
        both = positions.repeat_interleave(2, dim=1)
        valid2 = None if valid is None else valid.repeat_interleave(2, dim=1)
        persistent = self.persistent.to(x.dtype).expand(B, -1, -1)
        return self._attention(pairs, persistent, both, state, valid2)[:, 1::2]  # the input tokens' outputs

    def _mac(self, x: Tensor, mask: Tensor | None, positions: Tensor | None, state: TitansState | None) -> Tensor:
        """MAC: per segment, retrieve, attend, then update the memory with the attention's output (§4.1)."""
        B, T, _ = x.shape
        if state is not None:
            if positions is None:
                raise ValueError("TitansMixer: positions [B, t] are required with a state (the absolute index of x)")
            return self._mac_step(x, positions.expand(B, T), state, mask)
        x, order = compact(x, mask)  # valid tokens first; trailing pads only reach later pads
        L, kwargs = self.window_size, self.memory.op_kwargs()
        memory: tuple[Tensor | None, ...] = self.memory.expanded(B)
        momentum: tuple[Tensor | None, ...] | None = None
        conv = self.mem_convs.init_state(B, device=x.device, dtype=x.dtype)
        outs = []
        for start in range(0, T, L):  # segments of whole chunks: each op call starts at a chunk boundary
            seg = x[:, start : start + L]
            pos = torch.arange(start, start + seg.shape[1], device=x.device).expand(B, -1)
            y = self._segment_attention(self._retrieve(seg, list(memory)), seg, pos, None, None)
            inputs = self.memory_inputs(y, conv)  # M_t = M_{t-1}(y_t): the memory learns the attention's output
            q, k, v, lr = (inputs.pop(key) for key in ("q", "k", "v", "lr"))
            read, memory, momentum = ops.memory_gd(q, k, v, memory, lr, **inputs, momentum_state=momentum, **kwargs)
            outs.append(self._project(self._gate(y, read.reshape(B, -1, self.width)), seg))  # o_t = y_t ⊗ M*_t(y_t)
        return restore(torch.cat(outs, 1), order)

    def _mac_step(self, x: Tensor, positions: Tensor, state: TitansState, valid: Tensor | None) -> Tensor:
        """MAC token by token from ``state`` (updated in place); a token at a segment start first stores ``M_{s-1}``."""
        assert state.segment is not None, "a MAC state holds the memory of the segment start"
        segment = list(state.segment)  # new tensors below; written back in place at the end (autograd saved these)
        outs = []
        for i in range(x.shape[1]):
            x_i, pos_i = x[:, i : i + 1], positions[:, i : i + 1]
            ok = None if valid is None else valid[:, i : i + 1]
            starts = pos_i[:, 0] % self.window_size == 0  # (B,): this row's token opens a segment
            if ok is not None:
                starts = starts & ok[:, 0]
            row = starts.view(-1, *([1] * (segment[0].dim() - 1)))
            segment = [torch.where(row, cur, seg) for seg, cur in zip(segment, state.memory.current, strict=True)]
            y = self._segment_attention(self._retrieve(x_i, self.memory._full(segment)), x_i, pos_i, state, ok)
            outs.append(self._project(self._gate(y, self._memory(y, state, ok)), x_i))
        for target, value in zip(state.segment, segment, strict=True):
            target.copy_(value)
        return torch.cat(outs, 1)

    def extra_repr(self) -> str:
        n_p = self.persistent.shape[0]
        return f"{self.variant}, heads={self.n_heads}x{self.head_dim}, window={self.window_size}, persistent={n_p}"


class Titans(FastWeightBackbone):
    """Titans: ``n_layers`` blocks ``x + MAG(RMSNorm(x))`` (or MAL), ``x + SwiGLU(RMSNorm(x))``, a final RMSNorm."""

    config_class: ClassVar[type[ArchConfig]] = TitansConfig
    config: TitansConfig

    def build_mixer(self, index: int) -> nn.Module:
        """The :class:`TitansMixer` of every layer."""
        c = self.config
        return TitansMixer(
            c.d_model,
            c.n_heads,
            c.head_size,
            variant=c.variant,
            memory_depth=c.memory_depth,
            memory_hidden=c.memory_hidden,
            memory_norm=c.memory_norm,
            momentum=c.momentum,
            memory_lr=c.memory_lr,
            mini_batch_size=c.mini_batch_size,
            n_persistent=c.n_persistent,
            window_size=c.window_size,
            conv_size=c.conv_size,
            rope=c.rope,
            rope_theta=c.rope_theta,
            norm_eps=c.norm_eps,
            init_std=c.init_std,
            output_gate=c.output_gate,
        )
