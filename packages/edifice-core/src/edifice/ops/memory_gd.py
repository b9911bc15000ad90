"""Chunked test-time gradient descent on a fast-weight memory: the inner loop of TTT, Titans and MIRAS.

A *memory* is a small network whose weights are a recurrent state: every token ``t`` takes a gradient step on an
associative loss ``ℓ(M; k_t, v_t)`` between the memory's output at the key and the value, and the output at ``t``
reads the updated memory at the query. Following MIRAS (Behrouz, Razaviyayn, Zhong & Mirrokni 2025,
arXiv:2504.13173, §3-5) the op is parameterised by four choices, each a keyword:

* **memory architecture** -- ``memory = (W1, b1)`` (linear, ``f(x) = x W1 + b1``) or ``(W1, b1, W2, b2)`` (two-layer
  MLP, ``f(x) = act(x W1 + b1) W2 + b2``; biases may be None); optionally ``y = x + LN(f(x))`` (``residual`` and a
  per-head LayerNorm ``norm_weight``/``norm_bias``, TTT §2.7 "LN and residual connection");
* **attentional bias** (the inner loss, ``e = y - v``) -- ``"l2"``: ``½‖e‖²`` (TTT eq. 4, Titans eq. 12 up to the
  factor 2 the caller folds into the learning rate); ``"lp"``: ``Σ_i (e_i² + eps)^{p/2}``, MIRAS eq. 10 with
  ``|x|`` smoothed as ``sqrt(x² + eps)`` (its Remark on smooth approximations), whose gradient is the smoothed
  ``p·Sign(e)|e|^{p-1}`` of eq. 11; ``"huber"``: ``½‖e‖²`` if ``‖e‖₂ <= δ_t`` else ``δ_t‖e‖₁``, whose gradient is
  Yaad's switch between ``∇ℓ₂`` and ``δ_t ∇ℓ₁`` (MIRAS eqs. 16 and 26);
* **retention** -- a multiplicative gate ``retain`` ``a_t ∈ (0, 1]`` on the previous memory (Titans' ``1 - α_t``,
  eq. 13; MIRAS' ``α_t``), and a read-out map ``φ`` from the accumulated state ``A`` to the memory ``W = φ(A)``:
  ``"identity"``, ``"lq"`` (``W = A / ‖A‖_q^{q-2}`` per weight tensor: Moneta's ℓ_q retention, MIRAS eq. 24) or
  ``"softmax"`` (``W = c·softmax(A)`` over each weight's input axis: Memora's KL retention, MIRAS eq. 27 written in
  logit space, where ``α log W + const`` is the softmax-invariant ``α A``);
* **learning algorithm** -- gradient descent with a per-token learning rate ``lr`` ``θ_t``, optionally with momentum
  ``η_t`` (Titans eqs. 10 and 14, "past surprise")::

      G_t = ∇_W ℓ(W_{t'}; k_t, v_t)                          gradient at the memory of the chunk start t'
      S_t = η_t S_{t-1} - θ_t G_t;   A_t = a_t A_{t-1} + S_t  (with momentum)
      A_t = a_t A_{t-1} - θ_t G_t                           (without)
      W_t = φ(A_t),   o_t = f(q_t; W_t)

  or TTT's per-query ``token_scale`` ``r_t`` (the learnable ``1/i`` factor of the reference implementation):
  ``A_t = A_{t'} - r_t Σ_{t'<s<=t} θ_s G_s`` (TTT §2.5, mini-batch gradient descent; no retention gate).

Mini-batch (chunked) gradients: as TTT §2.5 and Titans §3.2, every gradient of a chunk of ``chunk_size`` tokens is
taken at the memory of the chunk's start, so a chunk's gradients are computed at once. All coefficients are scalars
per (batch, head, token), so every ``A_t`` is ``a_t A_{t'} + m_t S_{t'} - Σ_{s<=t} c_{ts} x_s^T g_s`` where each
layer's gradient is the rank-one ``x_s^T g_s`` (input times output gradient): ``a_t = Π a``, ``m_t`` and ``c_{ts}``
come from segment products of ``a`` and ``η`` (Titans §3.2: "momentum is a linear recurrence"). With ``φ`` the
identity the outputs then follow without materialising any per-token weight (the *dual form*, TTT §2.6)::

    Z_t = a_t x_t W + m_t x_t S - Σ_{s<=t} c_{ts} (x_t · x_s) g_s      (+ the same for the bias, x = 1)

layer after layer (the second layer's query input is the activation of the first, its key inputs the activations
at the chunk start). With a non-linear ``φ`` (Moneta with ``q != 2``, Memora) the op materialises each token's
``A_t`` inside the chunk (the primal form) and applies ``φ`` per token -- exact, where the MIRAS paper linearises
inside chunks (its eqs. 30-32); memory is ``O(chunk_size · |W|)`` per head. Only the hand-over between chunks loops.

The gradient is written out (LayerNorm backward, activation derivative, loss derivative); :func:`memory_gd_naive`
is the test oracle: one token at a time, each ``G_t`` obtained from ``torch.autograd.grad`` of the loss.

Layout: q, k ``[B, T, H, Dk]``, v ``[B, T, H, Dv]``, lr / retain / momentum / token_scale / delta ``[B, T, H]``,
weights ``[B, H, D_in, D_out]`` and biases ``[B, H, D_out]`` (one memory per sequence and head), norm weights
``[H, Dv]``. The op returns ``(o [B, T, H, Dv], memory, momentum)``: the final accumulated state ``A`` (a tuple like
``memory``, fp32) and the final momentum (None without momentum). A trailing partial chunk is applied as if the
sequence ended there.

Legend: ``B`` batch, ``T`` time, ``H`` heads, ``C`` chunk size, ``N`` chunks, ``Dk``/``Dh``/``Dv`` key, hidden
and value sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edifice.ops._checks import expect_floating, expect_rank, fmt_shape
from edifice.ops._registry import Op

__all__ = [
    "ACTIVATIONS",
    "CHUNK",
    "LOSSES",
    "READOUTS",
    "Memory",
    "activation_grad",
    "check_memory_gd",
    "memory_apply",
    "memory_gd",
    "memory_gd_naive",
    "memory_gd_reference",
    "memory_gradient_factors",
    "memory_loss",
    "memory_readout",
]

_OP = "memory_gd"

#: Default tokens per chunk (TTT's mini-batch size b = 16, §2.5).
CHUNK = 16
#: Activations of a two-layer memory.
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
#: Inner losses ("attentional biases").
LOSSES = ("l2", "lp", "huber")
#: Read-out maps from the accumulated state to the memory.
READOUTS = ("identity", "lq", "softmax")

#: ``(W1, b1)`` or ``(W1, b1, W2, b2)``: weights ``[B, H, D_in, D_out]``, biases ``[B, H, D_out]`` or None.
Memory = tuple[torch.Tensor | None, ...]

_TINY = 1e-30  # floor of gates before their logarithm (a gate of 0 is a segment product of exactly 0)
_NORM_FLOOR = 1e-6  # floor of ‖A‖_q before it divides


# -- argument checks ----------------------------------------------------------------------------------------------
def _check_memory(name: str, memory: Sequence[torch.Tensor | None], B: int, H: int, Dk: int, Dv: int) -> None:
    """The memory's structure and shapes (``name`` is ``memory`` or ``momentum_state``)."""
    if not isinstance(memory, tuple | list) or len(memory) not in (2, 4):
        raise ValueError(f"{_OP}: {name} must be a tuple (W1, b1) or (W1, b1, W2, b2), got {type(memory).__name__}")
    depth = len(memory) // 2
    for i in range(depth):
        W, b = memory[2 * i], memory[2 * i + 1]
        label = f"{name}[{2 * i}] (W{i + 1})"
        expect_rank(_OP, label, W, 4, "[B, H, D_in, D_out]")
        assert W is not None
        first = memory[0]
        d_in = Dk if i == 0 or first is None else first.shape[-1]
        d_out = Dv if i == depth - 1 else W.shape[-1]
        if tuple(W.shape) != (B, H, d_in, d_out):
            raise ValueError(
                f"{_OP}: {label} must be [B, H, D_in, D_out] = {fmt_shape((B, H, d_in, d_out))}, got "
                f"{fmt_shape(W.shape)}"
            )
        if b is not None:
            expect_rank(_OP, f"{name}[{2 * i + 1}] (b{i + 1})", b, 3, "[B, H, D_out]")
            if tuple(b.shape) != (B, H, d_out):
                raise ValueError(
                    f"{_OP}: {name}[{2 * i + 1}] (b{i + 1}) must be [B, H, D_out] = {fmt_shape((B, H, d_out))}, "
                    f"got {fmt_shape(b.shape)}"
                )
        expect_floating(_OP, **{f"W{i + 1}": W, f"b{i + 1}": b})


def check_memory_gd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    memory: Memory,
    lr: torch.Tensor,
    *,
    retain: torch.Tensor | None = None,
    momentum: torch.Tensor | None = None,
    momentum_state: Memory | None = None,
    token_scale: torch.Tensor | None = None,
    activation: str = "gelu",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    residual: bool = False,
    loss: str = "l2",
    p: float = 2.0,
    delta: torch.Tensor | None = None,
    eps: float = 1e-6,
    readout: str = "identity",
    readout_q: float = 2.0,
    readout_scale: float = 1.0,
    chunk_size: int = CHUNK,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected layout when the arguments are invalid.

    Skipped while ``torch.compile`` traces (as the core input validator is): the checks are plain Python on shapes,
    and tracing them costs more than the op itself.
    """
    if torch.compiler.is_compiling():
        return
    expect_rank(_OP, "q", q, 4, "[B, T, H, Dk]")
    B, T, H, Dk = q.shape
    expect_rank(_OP, "k", k, 4, "[B, T, H, Dk]")
    expect_rank(_OP, "v", v, 4, "[B, T, H, Dv]")
    expect_floating(_OP, q=q, k=k, v=v)
    if tuple(k.shape) != (B, T, H, Dk):
        raise ValueError(f"{_OP}: k must be [B, T, H, Dk] = {fmt_shape(q.shape)} like q, got {fmt_shape(k.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(
            f"{_OP}: v must be [B, T, H, Dv] with [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(v.shape)}"
        )
    Dv = v.shape[-1]
    _check_memory("memory", memory, B, H, Dk, Dv)
    gates = {"lr": lr, "retain": retain, "momentum": momentum, "token_scale": token_scale, "delta": delta}
    for name, gate in gates.items():
        if gate is None:
            continue
        expect_rank(_OP, name, gate, 3, "[B, T, H]")
        expect_floating(_OP, **{name: gate})
        if tuple(gate.shape) != (B, T, H):
            raise ValueError(f"{_OP}: {name} must be [B, T, H] = {fmt_shape((B, T, H))}, got {fmt_shape(gate.shape)}")
    if momentum_state is not None:
        if momentum is None:
            raise ValueError(f"{_OP}: momentum_state needs momentum [B, T, H] (the momentum decay η)")
        _check_memory("momentum_state", momentum_state, B, H, Dk, Dv)
        if [m is None for m in momentum_state] != [m is None for m in memory] or len(momentum_state) != len(memory):
            raise ValueError(f"{_OP}: momentum_state must have the structure of memory (same depth and biases)")
    if token_scale is not None and (retain is not None or momentum is not None):
        raise ValueError(f"{_OP}: token_scale (TTT's per-query step scale) cannot be combined with retain or momentum")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{_OP}: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if loss not in LOSSES:
        raise ValueError(f"{_OP}: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "huber" and delta is None:
        raise ValueError(f"{_OP}: loss='huber' needs delta [B, T, H] (the per-token threshold δ_t)")
    if not (isinstance(p, int | float) and p >= 1):
        raise ValueError(f"{_OP}: p must be a number >= 1, got {p!r}")
    if readout not in READOUTS:
        raise ValueError(f"{_OP}: readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    if not (isinstance(readout_q, int | float) and readout_q > 1):
        raise ValueError(f"{_OP}: readout_q must be a number > 1, got {readout_q!r}")
    if residual and Dk != Dv:
        raise ValueError(f"{_OP}: residual=True needs Dk == Dv, got Dk={Dk} and Dv={Dv}")
    if norm_weight is not None and tuple(norm_weight.shape) != (H, Dv):
        raise ValueError(
            f"{_OP}: norm_weight must be [H, Dv] = {fmt_shape((H, Dv))}, got {fmt_shape(norm_weight.shape)}"
        )
    if norm_bias is not None:
        if norm_weight is None:
            raise ValueError(f"{_OP}: norm_bias needs norm_weight (the LayerNorm is on when norm_weight is given)")
        if tuple(norm_bias.shape) != (H, Dv):
            raise ValueError(
                f"{_OP}: norm_bias must be [H, Dv] = {fmt_shape((H, Dv))}, got {fmt_shape(norm_bias.shape)}"
            )
    for name, value in (("norm_eps", norm_eps), ("eps", eps), ("readout_scale", readout_scale)):
        if not (isinstance(value, int | float) and value > 0):
            raise ValueError(f"{_OP}: {name} must be a positive number, got {value!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{_OP}: chunk_size must be a positive int, got {chunk_size!r}")


# -- the memory, its loss and its gradient ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Spec:
    """The memory's architecture: activation, the optional per-head LayerNorm and the residual connection."""

    activation: str = "gelu"
    norm_weight: torch.Tensor | None = None
    norm_bias: torch.Tensor | None = None
    norm_eps: float = 1e-6
    residual: bool = False

    def to(self, dtype: torch.dtype) -> _Spec:
        """The same spec with the norm parameters in ``dtype``."""
        nw = None if self.norm_weight is None else self.norm_weight.to(dtype)
        nb = None if self.norm_bias is None else self.norm_bias.to(dtype)
        return dataclasses.replace(self, norm_weight=nw, norm_bias=nb)


def _act(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if activation == "silu":
        return F.silu(x)
    return F.relu(x)


def activation_grad(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The derivative of ``activation`` at ``x``, written out (the memory's backward pass does not use autograd)."""
    if activation == "gelu":  # Φ(x) + x φ(x)
        return 0.5 * (1.0 + torch.erf(x * math.sqrt(0.5))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    if activation == "gelu_tanh":
        c = math.sqrt(2 / math.pi)
        th = torch.tanh(c * (x + 0.044715 * x**3))
        return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 3 * 0.044715 * x * x)
    if activation == "silu":
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    return (x > 0).to(x.dtype)


def _layers(memory: Sequence[torch.Tensor | None]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(W, b)`` per layer of a memory tuple."""
    out = []
    for i in range(0, len(memory), 2):
        W = memory[i]
        assert W is not None, "memory weights cannot be None (only biases can)"
        out.append((W, memory[i + 1]))
    return out


def _layer_norm(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ẑ, std)`` of a LayerNorm over the last axis (biased variance, as ``nn.LayerNorm``)."""
    mu = z.mean(-1, keepdim=True)
    var = (z - mu).square().mean(-1, keepdim=True)
    std = torch.sqrt(var + eps)
    return (z - mu) / std, std


def _heads(x: torch.Tensor) -> torch.Tensor:
    """Per-head vectors ``[H, D]`` broadcast over ``[B, H, n, D]``."""
    return x[None, :, None, :]


def _finish(z: torch.Tensor, x: torch.Tensor, spec: _Spec) -> torch.Tensor:
    """``[x +] [LN](z)``: the memory's LayerNorm and residual around its last layer's output ``z``."""
    if spec.norm_weight is not None:
        zn, _ = _layer_norm(z, spec.norm_eps)
        z = zn * _heads(spec.norm_weight)
        if spec.norm_bias is not None:
            z = z + _heads(spec.norm_bias)
    return x + z if spec.residual else z


def _apply(memory: Sequence[torch.Tensor | None], x: torch.Tensor, spec: _Spec) -> torch.Tensor:
    z = x
    layers = _layers(memory)
    for i, (W, b) in enumerate(layers):
        z = z @ W
        if b is not None:
            z = z + b[:, :, None, :]
        if i < len(layers) - 1:
            z = _act(z, spec.activation)
    return _finish(z, x, spec)


def memory_apply(
    memory: Sequence[torch.Tensor | None],
    x: torch.Tensor,
    *,
    activation: str = "gelu",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    residual: bool = False,
) -> torch.Tensor:
    """The memory's output ``y = [x +] [LN](f(x))`` for inputs ``x [B, H, n, Dk]`` (head-major) -> ``[B, H, n, Dv]``."""
    return _apply(memory, x, _Spec(activation, norm_weight, norm_bias, norm_eps, residual))


def memory_loss(
    y: torch.Tensor,
    v: torch.Tensor,
    *,
    loss: str = "l2",
    p: float = 2.0,
    delta: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The inner loss of each token: ``y``, ``v`` ``[..., n, Dv]`` (``delta [..., n]``) -> ``[..., n]`` (module doc)."""
    e = y - v
    if loss == "l2":
        return 0.5 * e.square().sum(-1)
    if loss == "lp":
        return (e.square() + eps).pow(p / 2).sum(-1)
    if delta is None:
        raise ValueError(f"{_OP}: loss='huber' needs delta (the per-token threshold δ_t)")
    small = e.norm(dim=-1) <= delta
    return torch.where(small, 0.5 * e.square().sum(-1), delta * e.abs().sum(-1))


def _loss_grad(
    y: torch.Tensor, v: torch.Tensor, loss: str, p: float, delta: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``∂ℓ/∂y`` of :func:`memory_loss`, written out."""
    e = y - v
    if loss == "l2":
        return e
    if loss == "lp":
        return p * e * (e.square() + eps).pow(p / 2 - 1)
    assert delta is not None
    small = (e.norm(dim=-1) <= delta)[..., None]
    return torch.where(small, e, delta[..., None] * torch.sign(e))


def _gradient_factors(
    memory: Sequence[torch.Tensor | None],
    k: torch.Tensor,
    v: torch.Tensor,
    spec: _Spec,
    loss: str,
    p: float,
    delta: torch.Tensor | None,
    eps: float,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = _layers(memory)
    inputs, pre = [], []
    z = k
    for i, (W, b) in enumerate(layers):
        inputs.append(z)
        z = z @ W
        if b is not None:
            z = z + b[:, :, None, :]
        pre.append(z)
        if i < len(layers) - 1:
            z = _act(z, spec.activation)
    y = z
    if spec.norm_weight is not None:
        zn, std = _layer_norm(z, spec.norm_eps)
        y = zn * _heads(spec.norm_weight)
        if spec.norm_bias is not None:
            y = y + _heads(spec.norm_bias)
    if spec.residual:
        y = y + k
    g = _loss_grad(y, v, loss, p, delta, eps)  # ∂ℓ/∂y, also ∂ℓ/∂(LN output): the residual passes it through
    if spec.norm_weight is not None:  # LayerNorm backward: (ĝ - mean ĝ - ẑ mean(ĝ ẑ)) / std with ĝ = g γ
        gn = g * _heads(spec.norm_weight)
        g = (gn - gn.mean(-1, keepdim=True) - zn * (gn * zn).mean(-1, keepdim=True)) / std
    factors: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(len(layers) - 1, -1, -1):
        factors.append((inputs[i], g))
        if i > 0:  # back through W_i and the activation of the layer below
            g = (g @ layers[i][0].transpose(-1, -2)) * activation_grad(pre[i - 1], spec.activation)
    return factors[::-1]


def memory_gradient_factors(
    memory: Sequence[torch.Tensor | None],
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    activation: str = "gelu",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    residual: bool = False,
    loss: str = "l2",
    p: float = 2.0,
    delta: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per token and layer, the rank-one factors ``(x, g)`` of ``∇_W ℓ = xᵀ g`` (and ``∇_b ℓ = g``) at ``memory``.

    ``k [B, H, n, Dk]``, ``v [B, H, n, Dv]``, ``delta [B, H, n]`` (head-major) -> one ``(x [B, H, n, D_in],
    g [B, H, n, D_out])`` per layer: the layer's input and the loss gradient at its pre-activation output.
    """
    spec = _Spec(activation, norm_weight, norm_bias, norm_eps, residual)
    return _gradient_factors(memory, k, v, spec, loss, p, delta, eps)


def memory_readout(
    state: Sequence[torch.Tensor | None], readout: str = "identity", q: float = 2.0, scale: float = 1.0
) -> list[torch.Tensor | None]:
    """The memory ``W = φ(A)`` of an accumulated state (weights ``[..., D_in, D_out]``, biases ``[..., D_out]``)."""
    if readout == "identity":
        return list(state)
    out: list[torch.Tensor | None] = []
    for i, a in enumerate(state):
        if a is None:
            out.append(None)
            continue
        matrix = i % 2 == 0
        if readout == "lq":  # A / ‖A‖_q^{q-2}, the norm over the tensor's entries (MIRAS eq. 24)
            dims = (-2, -1) if matrix else (-1,)
            norm = a.abs().pow(q).sum(dims, keepdim=True).pow(1.0 / q).clamp_min(_NORM_FLOOR)
            out.append(a / norm.pow(q - 2))
        else:  # c·softmax over the input axis (MIRAS eq. 27)
            out.append(scale * torch.softmax(a, dim=-2 if matrix else -1))
    return out


# -- chunk coefficients -------------------------------------------------------------------------------------------
def _segment_products(log_x: torch.Tensor) -> torch.Tensor:
    """``P[..., t, s] = Π_{s<u<=t} x_u`` for ``s <= t`` (1 on the diagonal), 0 above it: ``[..., C] -> [..., C, C]``.

    Summed directly over a masked copy of the logs (not as a difference of running totals), so nothing cancels.
    """
    C = log_x.shape[-1]
    lower = torch.ones(C, C, dtype=torch.bool, device=log_x.device).tril(-1)  # u > s
    sums = log_x.unsqueeze(-1).expand(*log_x.shape, C).masked_fill(~lower, 0.0).cumsum(dim=-2)  # (..., t, s)
    causal = torch.ones(C, C, dtype=torch.bool, device=log_x.device).tril()
    return sums.masked_fill(~causal, -math.inf).exp()


@dataclasses.dataclass
class _Coefficients:
    """``A_t = a_t A_{t'} + m_t S_{t'} - Σ_s c_{ts} G_s`` and ``S_t = e0_t S_{t'} - Σ_s e_{ts} G_s`` (module doc)."""

    a: torch.Tensor  # (B, H, N, C)
    c: torch.Tensor  # (B, H, N, C, C)
    m: torch.Tensor | None = None  # (B, H, N, C), with momentum
    e0: torch.Tensor | None = None  # (B, H, N, C), with momentum
    e: torch.Tensor | None = None  # (B, H, N, C, C), with momentum


def _coefficients(
    theta: torch.Tensor, retain: torch.Tensor | None, momentum: torch.Tensor | None, token_scale: torch.Tensor | None
) -> _Coefficients:
    """The coefficients of every chunk from its learning rates and gates ``[B, H, N, C]``."""
    C = theta.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=theta.device).tril()
    if token_scale is not None:  # A_t = A_{t'} - r_t Σ_{s<=t} θ_s G_s
        c = (token_scale[..., :, None] * theta[..., None, :]).masked_fill(~causal, 0.0)
        return _Coefficients(torch.ones_like(theta), c)
    log_a = torch.zeros_like(theta) if retain is None else retain.clamp_min(_TINY).log()
    a = log_a.cumsum(-1).exp()  # Π_{u<=t} a_u
    decay = _segment_products(log_a)  # Π_{s<u<=t} a_u
    if momentum is None:  # A_t = a_t A_{t-1} - θ_t G_t
        return _Coefficients(a, decay * theta[..., None, :])
    log_e = momentum.clamp_min(_TINY).log()
    e0 = log_e.cumsum(-1).exp()  # Π_{u<=r} η_u
    carry = _segment_products(log_e)  # Π_{s<u<=r} η_u
    # A_t = a_t A_{t'} + Σ_{r<=t} (Π_{r<u<=t} a_u) S_r  with  S_r = e0_r S_{t'} - Σ_{s<=r} (Π_{s<u<=r} η_u) θ_s G_s.
    m = (decay @ e0.unsqueeze(-1)).squeeze(-1)
    c = (decay @ carry) * theta[..., None, :]
    return _Coefficients(a, c, m, e0, carry * theta[..., None, :])


# -- the chunked reference ----------------------------------------------------------------------------------------
def _chunk_layout(x: torch.Tensor, C: int, work: torch.dtype, pad_value: float = 0.0) -> torch.Tensor:
    """``[B, T, H, *] -> [B, H, N, C, *]`` in ``work``, the time axis padded to ``N * C`` with ``pad_value``."""
    B, T, H = x.shape[:3]
    N = -(-T // C)
    x = x.to(work).transpose(1, 2)  # (B, H, T, *)
    tail = [0, 0] * (x.dim() - 3)
    x = F.pad(x, [*tail, 0, N * C - T], value=pad_value)
    return x.reshape(B, H, N, C, *x.shape[3:])


def _rank_one_sum(coef: torch.Tensor, x: torch.Tensor, g: torch.Tensor, matrix: bool) -> torch.Tensor:
    """``Σ_s coef_s x_sᵀ g_s`` (a weight, ``coef [B, H, C]``) or ``Σ_s coef_s g_s`` (a bias)."""
    weighted = coef[..., None] * g  # (B, H, C, D_out)
    return x.transpose(-1, -2) @ weighted if matrix else weighted.sum(-2)


def _per_tensor(coef: torch.Tensor, matrix: bool) -> torch.Tensor:
    """A per-(batch, head) scalar ``[B, H]`` shaped to scale a weight ``[B, H, D_in, D_out]`` or bias ``[B, H, D]``."""
    return coef[..., None, None] if matrix else coef[..., None]


def memory_gd_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    memory: Memory,
    lr: torch.Tensor,
    *,
    retain: torch.Tensor | None = None,
    momentum: torch.Tensor | None = None,
    momentum_state: Memory | None = None,
    token_scale: torch.Tensor | None = None,
    activation: str = "gelu",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    residual: bool = False,
    loss: str = "l2",
    p: float = 2.0,
    delta: torch.Tensor | None = None,
    eps: float = 1e-6,
    readout: str = "identity",
    readout_q: float = 2.0,
    readout_scale: float = 1.0,
    chunk_size: int = CHUNK,
) -> tuple[torch.Tensor, Memory, Memory | None]:
    """Chunked test-time gradient descent (module doc): dual form for ``readout="identity"``, else per-token.

    q, k ``[B, T, H, Dk]``, v ``[B, T, H, Dv]``, ``memory`` ``(W1, b1[, W2, b2])`` with ``W [B, H, D_in, D_out]``,
    lr and the optional gates ``[B, T, H]``. Returns ``(o [B, T, H, Dv] in v's dtype, final state, final momentum)``.
    """
    with _autocast_off(q.device.type):  # the memory and its updates stay in fp32 under autocast too
        return _chunked(
            q, k, v, memory, lr, retain, momentum, momentum_state, token_scale,
            _Spec(activation, norm_weight, norm_bias, norm_eps, residual),
            loss, p, delta, eps, readout, readout_q, readout_scale, chunk_size,
        )  # fmt: skip


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[object]:
    """A context that disables autocast on ``device_type`` (a no-op where autocast does not exist)."""
    if device_type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    memory: Memory,
    lr: torch.Tensor,
    retain: torch.Tensor | None,
    momentum: torch.Tensor | None,
    momentum_state: Memory | None,
    token_scale: torch.Tensor | None,
    spec: _Spec,
    loss: str,
    p: float,
    delta: torch.Tensor | None,
    eps: float,
    readout: str,
    readout_q: float,
    readout_scale: float,
    chunk_size: int,
) -> tuple[torch.Tensor, Memory, Memory | None]:
    """The body of :func:`memory_gd_reference`."""
    B, T, H, _ = q.shape
    C = min(chunk_size, T)
    N = -(-T // C)
    last = T - 1 - (N - 1) * C  # row of the last real token in the last chunk
    work = torch.promote_types(v.dtype, torch.float32)  # fp32 state and arithmetic (fp64 for fp64 inputs)
    spec = spec.to(work)
    qc, kc, vc = (_chunk_layout(x, C, work) for x in (q, k, v))  # (B, H, N, C, D)
    theta = _chunk_layout(lr, C, work)  # (B, H, N, C); padded steps have θ = 0 (and come after every real step)
    coef = _coefficients(
        theta,
        None if retain is None else _chunk_layout(retain, C, work, 1.0),
        None if momentum is None else _chunk_layout(momentum, C, work, 1.0),
        None if token_scale is None else _chunk_layout(token_scale, C, work),
    )
    dc = None if delta is None else _chunk_layout(delta, C, work, 1.0)
    state: list[torch.Tensor | None] = [None if w is None else w.to(work) for w in memory]
    mom: list[torch.Tensor | None] | None = None
    if momentum is not None:
        source = state if momentum_state is None else momentum_state
        mom = [
            None if w is None else (w.to(work) if momentum_state is not None else torch.zeros_like(w)) for w in source
        ]
    outs = []
    for n in range(N):  # hand the memory from chunk to chunk; everything inside a chunk is batched
        row = C - 1 if n < N - 1 else last
        W_c = memory_readout(state, readout, readout_q, readout_scale)  # the memory the chunk's gradients are at
        d_n = None if dc is None else dc[:, :, n]
        factors = _gradient_factors(W_c, kc[:, :, n], vc[:, :, n], spec, loss, p, d_n, eps)  # per layer (x, g)
        a, c = coef.a[:, :, n], coef.c[:, :, n]  # (B, H, C), (B, H, C, C)
        m = None if coef.m is None else coef.m[:, :, n]
        if readout == "identity":
            outs.append(_dual_outputs(qc[:, :, n], state, mom, factors, a, m, c, spec))
        else:
            per_token = _per_token_states(state, mom, factors, a, m, c)
            outs.append(
                _apply_per_token(memory_readout(per_token, readout, readout_q, readout_scale), qc[:, :, n], spec)
            )
        new_state: list[torch.Tensor | None] = []
        for i, w in enumerate(state):
            if w is None:
                new_state.append(None)
                continue
            matrix = i % 2 == 0
            x, g = factors[i // 2]
            carried = _per_tensor(a[:, :, row], matrix) * w
            if mom is not None and m is not None:
                s = mom[i]
                assert s is not None
                carried = carried + _per_tensor(m[:, :, row], matrix) * s
            new_state.append(carried - _rank_one_sum(c[:, :, row], x, g, matrix))
        if mom is not None and coef.e0 is not None and coef.e is not None:
            e0, e = coef.e0[:, :, n, row], coef.e[:, :, n, row]  # (B, H), (B, H, C)
            new_mom: list[torch.Tensor | None] = []
            for i, s in enumerate(mom):
                if s is None:
                    new_mom.append(None)
                    continue
                x, g = factors[i // 2]
                new_mom.append(_per_tensor(e0, i % 2 == 0) * s - _rank_one_sum(e, x, g, i % 2 == 0))
            mom = new_mom
        state = new_state
    o = torch.stack(outs, 2).reshape(B, H, N * C, -1)[:, :, :T].transpose(1, 2)  # (B, T, H, Dv)
    return o.to(v.dtype), tuple(state), None if mom is None else tuple(mom)


def _dual_outputs(
    qn: torch.Tensor,
    state: list[torch.Tensor | None],
    mom: list[torch.Tensor | None] | None,
    factors: list[tuple[torch.Tensor, torch.Tensor]],
    a: torch.Tensor,
    m: torch.Tensor | None,
    c: torch.Tensor,
    spec: _Spec,
) -> torch.Tensor:
    """Outputs of one chunk with ``φ`` the identity, without materialising per-token weights (TTT §2.6's dual form).

    Layer by layer, ``Z_t = a_t u_t W + m_t u_t S - Σ_s c_{ts} (u_t · x_s) g_s`` plus the bias terms.
    """
    u = qn  # (B, H, C, Dk): the layer's input at the queries
    layers = _layers(state)
    for layer, (W, b) in enumerate(layers):
        x, g = factors[layer]
        z = a[..., None] * (u @ W) - (c * (u @ x.transpose(-1, -2))) @ g  # (B, H, C, D_out)
        if b is not None:
            z = z + a[..., None] * b[:, :, None, :] - c @ g
        if mom is not None and m is not None:
            S, Sb = mom[2 * layer], mom[2 * layer + 1]
            assert S is not None
            z = z + m[..., None] * (u @ S)
            if Sb is not None:
                z = z + m[..., None] * Sb[:, :, None, :]
        u = _act(z, spec.activation) if layer < len(layers) - 1 else z
    return _finish(u, qn, spec)


def _per_token_states(
    state: list[torch.Tensor | None],
    mom: list[torch.Tensor | None] | None,
    factors: list[tuple[torch.Tensor, torch.Tensor]],
    a: torch.Tensor,
    m: torch.Tensor | None,
    c: torch.Tensor,
) -> list[torch.Tensor | None]:
    """Every token's accumulated state ``A_t`` of one chunk (the primal form): ``[B, H, C, D_in, D_out]`` per weight."""
    out: list[torch.Tensor | None] = []
    for i, w in enumerate(state):
        if w is None:
            out.append(None)
            continue
        x, g = factors[i // 2]
        if i % 2 == 0:
            A = a[..., None, None] * w[:, :, None] - torch.einsum("bhts,bhsd,bhse->bhtde", c, x, g)
        else:
            A = a[..., None] * w[:, :, None] - c @ g
        if mom is not None and m is not None:
            s = mom[i]
            assert s is not None
            A = A + (m[..., None, None] * s[:, :, None] if i % 2 == 0 else m[..., None] * s[:, :, None])
        out.append(A)
    return out


def _apply_per_token(weights: list[torch.Tensor | None], qn: torch.Tensor, spec: _Spec) -> torch.Tensor:
    """The memory's output at each query ``qn [B, H, C, Dk]`` with that token's own weights ``[B, H, C, ...]``."""
    u = qn
    layers = _layers(weights)
    for layer, (W, b) in enumerate(layers):
        z = torch.einsum("bhtd,bhtde->bhte", u, W)
        if b is not None:
            z = z + b
        u = _act(z, spec.activation) if layer < len(layers) - 1 else z
    return _finish(u, qn, spec)


# -- the naive loop oracle ----------------------------------------------------------------------------------------
def _scaled(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A per-(batch, head) scalar ``[B, H]`` broadcast against a memory tensor ``w``."""
    return s.reshape(*s.shape, *([1] * (w.dim() - 2))) * w


def memory_gd_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    memory: Memory,
    lr: torch.Tensor,
    *,
    retain: torch.Tensor | None = None,
    momentum: torch.Tensor | None = None,
    momentum_state: Memory | None = None,
    token_scale: torch.Tensor | None = None,
    activation: str = "gelu",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    residual: bool = False,
    loss: str = "l2",
    p: float = 2.0,
    delta: torch.Tensor | None = None,
    eps: float = 1e-6,
    readout: str = "identity",
    readout_q: float = 2.0,
    readout_scale: float = 1.0,
    chunk_size: int = CHUNK,
) -> tuple[torch.Tensor, Memory, Memory | None]:
    """Test oracle: one token at a time, every gradient from ``torch.autograd.grad`` of the inner loss (fp32/fp64).

    The memory's gradient at token ``t`` is taken at ``φ`` of the state at the start of ``t``'s chunk; then the
    recurrence of the module doc advances the state and the output reads ``φ`` of the state after token ``t``.
    """
    T = q.shape[1]
    C = chunk_size
    work = torch.promote_types(v.dtype, torch.float32)
    spec = _Spec(activation, norm_weight, norm_bias, norm_eps, residual).to(work)
    qh, kh, vh = (x.to(work).transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    state = [None if w is None else w.to(work) for w in memory]
    mom = None
    if momentum is not None:
        source = state if momentum_state is None else momentum_state
        mom = [
            None if w is None else (w.to(work) if momentum_state is not None else torch.zeros_like(w)) for w in source
        ]
    acc = [None if w is None else torch.zeros_like(w) for w in state]  # TTT: Σ θ_s G_s of the current chunk
    anchor = list(state)
    outs = []
    for t in range(T):
        if t % C == 0:
            anchor = list(state)
        W_c = memory_readout(anchor, readout, readout_q, readout_scale)
        with torch.enable_grad():
            leaves = [None if w is None else (w if w.requires_grad else w.detach().requires_grad_(True)) for w in W_c]
            y = _apply(leaves, kh[:, :, t : t + 1], spec)
            d = None if delta is None else delta[:, t].to(work)[:, :, None]
            inner = memory_loss(y, vh[:, :, t : t + 1], loss=loss, p=p, delta=d, eps=eps).sum()
            grads = iter(torch.autograd.grad(inner, [w for w in leaves if w is not None], create_graph=True))
        G = [None if w is None else next(grads) for w in leaves]
        th = lr[:, t].to(work)  # (B, H)
        current: list[torch.Tensor | None] = []
        if token_scale is not None:  # A_t = A_{t'} - r_t Σ_{t'<s<=t} θ_s G_s
            r = token_scale[:, t].to(work)
            acc = [None if s is None or g is None else s + _scaled(th, g) for s, g in zip(acc, G, strict=True)]
            current = [None if w is None or s is None else w - _scaled(r, s) for w, s in zip(anchor, acc, strict=True)]
            if t % C == C - 1 or t == T - 1:  # the chunk ends: its last token's state is the next chunk's start
                state = current
                acc = [None if s is None else torch.zeros_like(s) for s in acc]
        else:
            a = torch.ones_like(th) if retain is None else retain[:, t].to(work)
            if mom is not None:  # S_t = η_t S_{t-1} - θ_t G_t;  A_t = a_t A_{t-1} + S_t
                assert momentum is not None
                eta = momentum[:, t].to(work)
                mom = [
                    None if s is None or g is None else _scaled(eta, s) - _scaled(th, g)
                    for s, g in zip(mom, G, strict=True)
                ]
                state = [None if w is None or s is None else _scaled(a, w) + s for w, s in zip(state, mom, strict=True)]
            else:  # A_t = a_t A_{t-1} - θ_t G_t
                state = [
                    None if w is None or g is None else _scaled(a, w) - _scaled(th, g)
                    for w, g in zip(state, G, strict=True)
                ]
            current = state
        outs.append(_apply(memory_readout(current, readout, readout_q, readout_scale), qh[:, :, t : t + 1], spec))
    o = torch.cat(outs, 2).transpose(1, 2)  # (B, T, H, Dv)
    return o.to(v.dtype), tuple(state), None if mom is None else tuple(mom)


memory_gd = Op("memory_gd", memory_gd_reference, naive=memory_gd_naive, check=check_memory_gd)
