"""What the test-time-learning entries (``ttt``, ``titans``, ``miras``) share: a fast-weight memory, its two forms, and
their stack (:class:`FastWeightBackbone`).

:class:`FastWeightMemory` holds a memory's learnable *initial* weights ``W_0`` (one per head), its architecture
(linear or two-layer MLP, optional LayerNorm + residual), its inner loss and its read-out map, and runs the memory
in the two forms of :mod:`edifice.ops.memory_gd`:

* ``forward`` -- the chunked training form: :func:`edifice.ops.memory_gd` over the whole sequence, every gradient of
  a mini-batch (chunk) taken at the memory of the chunk's start;
* ``step`` -- the recurrent form, one token at a time, with the same mini-batch semantics: the state holds the
  memory of the current chunk's start (the *anchor*, where gradients are taken), the running state ``A_t`` (for TTT:
  the chunk's accumulated ``Σ θ_s G_s``), the momentum ``S_t`` and how many tokens of the chunk were seen. When a
  chunk completes, the anchor moves. Every gradient is the written-out one of
  :func:`edifice.ops.memory_gd.memory_gradient_factors`; a padded token (``valid`` False) changes nothing.

Both give the same outputs at every position (a test checks it), so a prompt can be prefilled and continued token
by token from a constant-size state (the memory's weights, its momentum, the anchor: ``O(|W|)`` per head).

Padding in the chunked form: :func:`compact` moves each sequence's valid tokens to the front (stable), so the chunk
grid of every sequence starts at its first valid token exactly as without padding, and :func:`restore` puts the
outputs back; padded tokens come after every valid one and cannot influence them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.ffn import get_ffn
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.ops.memory_gd import memory_apply, memory_gradient_factors, memory_readout
from edifice.outputs import model_output

__all__ = [
    "FastWeightBackbone",
    "FastWeightMemory",
    "FastWeightState",
    "ShortConvs",
    "compact",
    "l2_normalize",
    "restore",
]


def compact(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Move each row's valid positions of ``x [B, T, ...]`` to the front, in order; returns ``(x, order [B, T])``."""
    if mask is None:
        return x, None
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # valid positions first, in their order
    index = order.reshape(*order.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, index), order


def restore(y: Tensor, order: Tensor | None) -> Tensor:
    """Undo :func:`compact` on an output ``y [B, T, ...]``: position ``order[b, j]`` gets ``y[b, j]``."""
    if order is None:
        return y
    index = order.reshape(*order.shape, *([1] * (y.dim() - 2))).expand_as(y)
    return torch.zeros_like(y).scatter(1, index, y)


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / sqrt(Σ x² + eps)`` over the last axis, in fp32, returned in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


@model_output
class FastWeightState:
    """Decoding state of a :class:`FastWeightMemory`: constant size, updated in place by ``step``.

    Each list holds the memory's tensors in order (``W1``, [``b1``,] [``W2``, [``b2``]]), ``[B, H, ...]`` fp32.
    """

    anchor: list[Tensor]
    """The state at the start of the current chunk: every gradient of the chunk is taken at its memory."""
    current: list[Tensor]
    """The running state ``A_t`` (with ``token_scale``: the chunk's accumulated ``Σ θ_s G_s``)."""
    momentum: list[Tensor]
    """The momentum ``S_t`` (empty without momentum)."""
    count: Tensor
    """``[B]`` int64: valid tokens seen so far (the position inside the current chunk is ``count % chunk_size``)."""


class FastWeightMemory(nn.Module):
    """A per-head fast-weight memory with learnable initial weights, run by :func:`edifice.ops.memory_gd`.

    ``depth=1``: ``f(x) = x W1 (+ b1)``, ``[Dk] -> [Dv]``; ``depth=2``: ``f(x) = act(x W1 (+ b1)) W2 (+ b2)`` with
    ``hidden`` units. ``norm=True`` adds a per-head LayerNorm (learnable, not updated at test time) and
    ``residual=True`` the skip connection: ``y = x + LN(f(x))``. The inner loss, read-out and its parameters are fixed
    keyword arguments of the op (``loss``, ``p``, ``readout``, ``readout_q``, ``readout_scale``, ``eps``).
    ``momentum`` and ``token_scale`` say which gates the entry passes, which decides the recurrent state's layout.
    ``init_std=None`` initialises each weight ``N(0, 1/D_in)`` (fan-in scaling, for unit-norm keys).
    """

    def __init__(
        self,
        n_heads: int,
        d_key: int,
        d_value: int,
        *,
        depth: int = 1,
        hidden: int | None = None,
        bias: bool = True,
        activation: str = "gelu",
        norm: bool = False,
        residual: bool = False,
        norm_eps: float = 1e-6,
        init_std: float | None = 0.02,
        chunk_size: int = 16,
        momentum: bool = False,
        token_scale: bool = False,
        **op_options: Any,
    ) -> None:
        super().__init__()
        if depth not in (1, 2):
            raise ValueError(f"FastWeightMemory: depth must be 1 (linear) or 2 (MLP), got {depth}")
        if residual and d_key != d_value:
            raise ValueError(f"FastWeightMemory: residual=True needs d_key == d_value, got {d_key} and {d_value}")
        hidden = 4 * d_key if hidden is None else hidden
        self.n_heads, self.d_key, self.d_value, self.depth, self.hidden = n_heads, d_key, d_value, depth, hidden
        self.activation, self.residual, self.norm_eps = activation, residual, norm_eps
        self.init_std, self.chunk_size = init_std, chunk_size
        self.has_momentum, self.token_scale = momentum, token_scale
        self.op_options = dict(op_options)
        sizes = [(d_key, d_value)] if depth == 1 else [(d_key, hidden), (hidden, d_value)]
        self.W1 = nn.Parameter(torch.empty(n_heads, *sizes[0]))
        self.b1 = nn.Parameter(torch.empty(n_heads, sizes[0][1])) if bias else None
        self.W2 = nn.Parameter(torch.empty(n_heads, *sizes[1])) if depth == 2 else None
        self.b2 = nn.Parameter(torch.empty(n_heads, sizes[1][1])) if depth == 2 and bias else None
        self.norm_weight = nn.Parameter(torch.empty(n_heads, d_value)) if norm else None
        self.norm_bias = nn.Parameter(torch.empty(n_heads, d_value)) if norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W ~ N(0, init_std²)`` (``init_std=None``: ``N(0, 1/D_in)``), zero biases, unit LayerNorm gain, no shift."""
        for weight in (self.W1, self.W2):
            if weight is not None:
                std = self.init_std if self.init_std is not None else weight.shape[-2] ** -0.5
                nn.init.normal_(weight, std=std)
        for bias in (self.b1, self.b2, self.norm_bias):
            if bias is not None:
                nn.init.zeros_(bias)
        if self.norm_weight is not None:
            nn.init.ones_(self.norm_weight)

    def initial(self) -> tuple[Tensor | None, ...]:
        """The initial memory ``(W1, b1[, W2, b2])`` as stored (``[H, ...]``; biases may be None)."""
        if self.depth == 1:
            return (self.W1, self.b1)
        return (self.W1, self.b1, self.W2, self.b2)

    def _spec(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "norm_weight": self.norm_weight,
            "norm_bias": self.norm_bias,
            "norm_eps": self.norm_eps,
            "residual": self.residual,
        }

    def op_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`edifice.ops.memory_gd` that this memory fixes."""
        return {**self._spec(), **self.op_options, "chunk_size": self.chunk_size}

    def expanded(self, batch_size: int) -> tuple[Tensor | None, ...]:
        """The initial memory of ``batch_size`` sequences, ``[B, H, ...]`` (a broadcast view, no copy)."""
        return tuple(None if w is None else w.unsqueeze(0).expand(batch_size, *w.shape) for w in self.initial())

    # -- the chunked form ---------------------------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, **gates: Tensor | None) -> Tensor:
        """Outputs ``[B, T, H, Dv]`` for q, k ``[B, T, H, Dk]``, v ``[B, T, H, Dv]``, lr and gates ``[B, T, H]``."""
        kwargs: dict[str, Any] = {**gates, **self.op_kwargs()}
        o, _, _ = ops.memory_gd(q, k, v, self.expanded(q.shape[0]), lr, **kwargs)
        return o

    # -- the recurrent form -------------------------------------------------------------------------------------
    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> FastWeightState:
        """The state before any token: anchor and running state ``W_0`` (fp32, fp64 for an fp64 model), zero momentum.

        With ``token_scale`` the running state is TTT's accumulated gradient sum, which starts at zero.
        """
        device = self.W1.device if device is None else device
        work = torch.promote_types(self.W1.dtype, torch.float32)  # fp32 (fp64 for an fp64 model)
        start = [w.to(device=device, dtype=work) for w in self.initial() if w is not None]
        anchor = [w.unsqueeze(0).repeat(batch_size, *([1] * w.dim())) for w in start]
        current = [torch.zeros_like(a) for a in anchor] if self.token_scale else [a.clone() for a in anchor]
        momentum = [torch.zeros_like(a) for a in anchor] if self.has_momentum else []
        return FastWeightState(anchor, current, momentum, torch.zeros(batch_size, dtype=torch.long, device=device))

    def _full(self, tensors: list[Tensor]) -> list[Tensor | None]:
        """A state list (present tensors only) back to the memory tuple's layout, None where a bias is absent."""
        it = iter(tensors)
        return [None if w is None else next(it) for w in self.initial()]

    def step(
        self,
        state: FastWeightState,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lr: Tensor,
        *,
        retain: Tensor | None = None,
        momentum: Tensor | None = None,
        token_scale: Tensor | None = None,
        delta: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        """Advance ``state`` (in place) token by token over ``q, k [B, t, H, Dk]`` etc.; returns ``[B, t, H, Dv]``.

        ``valid [B, t]`` (bool) marks real tokens; a padded one leaves the state unchanged.
        """
        work = state.anchor[0].dtype  # the state's float dtype (fp32, or fp64 for an fp64 model)
        spec: dict[str, Any] = {k: v.to(work) if isinstance(v, Tensor) else v for k, v in self._spec().items()}
        loss: dict[str, Any] = {key: self.op_options[key] for key in ("loss", "p", "eps") if key in self.op_options}
        readout = (
            self.op_options.get("readout", "identity"),
            self.op_options.get("readout_q", 2.0),
            self.op_options.get("readout_scale", 1.0),
        )
        C = self.chunk_size
        # Copies: the state is overwritten in place below while these may be saved for a backward pass.
        anchor, current, mom = ([t.clone() for t in ts] for ts in (state.anchor, state.current, state.momentum))
        count = state.count.clone()
        outs = []
        for i in range(q.shape[1]):
            kh, vh, qh = (x[:, i, :, None, :].to(work) for x in (k, v, q))  # (B, H, 1, D)
            d = None if delta is None else delta[:, i, :, None].to(work)
            W_c = memory_readout(self._full(anchor), *readout)
            factors = memory_gradient_factors(W_c, kh, vh, delta=d, **spec, **loss)
            grads = []  # ∇ℓ at the anchor's memory for this token, in the state's layout
            for j, w in enumerate(self.initial()):
                if w is None:
                    continue
                x, g = factors[j // 2]
                grads.append(x.transpose(-1, -2) @ g if j % 2 == 0 else g[:, :, 0])
            theta = lr[:, i].to(work)
            if token_scale is not None:  # acc += θ G;  A = anchor - r acc
                r = token_scale[:, i].to(work)
                new_current = [c + _scale(theta, g) for c, g in zip(current, grads, strict=True)]
                live = [a - _scale(r, c) for a, c in zip(anchor, new_current, strict=True)]
                new_mom = mom
            else:
                a_t = torch.ones_like(theta) if retain is None else retain[:, i].to(work)
                if momentum is not None:  # S = η S - θ G;  A = a A + S
                    eta = momentum[:, i].to(work)
                    new_mom = [_scale(eta, s) - _scale(theta, g) for s, g in zip(mom, grads, strict=True)]
                    new_current = [_scale(a_t, c) + s for c, s in zip(current, new_mom, strict=True)]
                else:  # A = a A - θ G
                    new_mom = mom
                    new_current = [_scale(a_t, c) - _scale(theta, g) for c, g in zip(current, grads, strict=True)]
                live = new_current
            outs.append(memory_apply(memory_readout(self._full(live), *readout), qh, **spec)[:, :, 0])  # (B, H, Dv)
            ok = torch.ones_like(count, dtype=torch.bool) if valid is None else valid[:, i]
            new_count = count + ok.to(count.dtype)
            done = ok & (new_count % C == 0)  # this token completes its chunk: the anchor moves
            current = [_where(ok, n, c) for n, c in zip(new_current, current, strict=True)]
            mom = [_where(ok, n, s) for n, s in zip(new_mom, mom, strict=True)]
            if token_scale is not None:
                anchor = [_where(done, lv, a) for lv, a in zip(live, anchor, strict=True)]
                current = [_where(done, torch.zeros_like(c), c) for c in current]
            else:
                anchor = [_where(done, c, a) for c, a in zip(current, anchor, strict=True)]
            count = new_count
        for target, value in zip((state.anchor, state.current, state.momentum), (anchor, current, mom), strict=True):
            for t_, v_ in zip(target, value, strict=True):
                t_.copy_(v_)
        state.count.copy_(count)
        return torch.stack(outs, 1).to(v.dtype)  # (B, t, H, Dv)

    def extra_repr(self) -> str:
        kind = "linear" if self.depth == 1 else f"mlp(hidden={self.hidden}, {self.activation})"
        extra = ", ln" if self.norm_weight is not None else ""
        extra += ", residual" if self.residual else ""
        return f"heads={self.n_heads}, {self.d_key}->{self.d_value}, {kind}{extra}, chunk={self.chunk_size}"


def _scale(s: Tensor, w: Tensor) -> Tensor:
    """A per-(batch, head) scalar ``[B, H]`` times a state tensor ``[B, H, ...]``."""
    return s.reshape(*s.shape, *([1] * (w.dim() - 2))) * w


def _where(keep: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per row ``[B]``: ``new`` where ``keep`` else ``old``."""
    return torch.where(keep.reshape(-1, *([1] * (new.dim() - 1))), new, old)


class ShortConvs(nn.Module):
    """Causal depthwise convolutions of several feature groups (q, k, v, ...), run as one convolution over their
    concatenated channels, with a per-token masked ``step``."""

    def __init__(self, channels: list[int], kernel_size: int, *, bias: bool = False) -> None:
        super().__init__()
        self.channels = list(channels)
        self.conv = CausalDepthwiseConv1d(sum(channels), kernel_size, bias=bias)

    def reset_parameters(self) -> None:
        """The convolution's default (``nn.Conv1d``'s) initialisation."""
        self.conv.reset_parameters()

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """The zero history ``[B, ΣC, K - 1]``."""
        return self.conv.init_state(batch_size, device=device, dtype=dtype)

    def forward(self, features: list[Tensor], state: Tensor | None = None, valid: Tensor | None = None) -> list[Tensor]:
        """Convolve each ``[B, T, C_i]``; with ``state`` continue its history (in place), skipping padded tokens."""
        x = torch.cat(features, -1)  # (B, T, ΣC)
        if state is None:
            y = self.conv(x)
        elif valid is None:
            y, history = self.conv.step(x, state)
            state.copy_(history)
        else:
            ys = []
            for i in range(x.shape[1]):
                y_i, history = self.conv.step(x[:, i : i + 1], state)
                state.copy_(_where(valid[:, i], history, state))
                ys.append(y_i)
            y = torch.cat(ys, 1)
        return list(y.split(self.channels, dim=-1))


def inverse_softplus(x: float) -> float:
    """``softplus⁻¹(x) = x + log(1 - exp(-x))`` for an initial bias that gives ``softplus(bias) = x``."""
    return x + math.log(-math.expm1(-x))


class FastWeightBackbone(SequenceBackbone):
    """The stack the test-time-learning entries share: ``x + Mixer(RMSNorm(x))``, ``x + SwiGLU(RMSNorm(x))``.

    Subclasses give the mixer of each layer (:meth:`build_mixer`); the block, the final RMSNorm and the
    initialisation (``N(0, init_std²)`` linear and embedding weights with zero biases, then each mixer's own
    parameters) are common. The config provides ``d_model``, ``ffn_hidden`` (0: no FFN), ``norm_eps``, ``dropout``
    and ``init_std``.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_mixer(self, index: int) -> nn.Module:
        """The test-time-learning mixer of layer ``index``; every subclass implements this."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_mixer(index)")

    def build_layer(self, index: int) -> nn.Module:
        """One pre-norm residual block around :meth:`build_mixer` and a SwiGLU FFN (none if ``ffn_hidden == 0``)."""
        c: Any = self.config
        ffn = get_ffn("swiglu", c.d_model, c.ffn_hidden) if c.ffn_hidden else None
        mixer = self.build_mixer(index)
        return TransformerBlock(c.d_model, mixer, ffn, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        c: Any = self.config
        return get_norm("rmsnorm", c.d_model, eps=c.norm_eps)

    def reset_parameters(self) -> None:
        """``N(0, init_std²)`` linear and embedding weights with zero biases, then each mixer's own parameters."""
        super().reset_parameters()
        std: float = self.config.init_std  # type: ignore[attr-defined]
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    nn.init.normal_(module.weight, std=std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            for layer in self.layers:
                layer.mixer.reset_parameters()  # type: ignore[union-attr,operator]
