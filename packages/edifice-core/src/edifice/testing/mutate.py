"""Mutation testing of signature tests: swap a hot op for a plausible wrong implementation (DESIGN §6).

A signature test proves an architecture's defining mechanism. If it still passes when the mechanism is broken --
attention that ignores its mask, a recurrence that never decays -- it proves nothing. ``mutate_op`` swaps an op of
:mod:`edifice.ops` for a wrong implementation for everything that calls it (models already built included), and the
test asserts that the signature test then fails::

    with mutate_op("sdpa", unmasked_sdpa):
        with pytest.raises(AssertionError):
            test_decoder_only_matches_llama()

Each wrong implementation keeps the op's signature and output shape; only the mechanism is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "MUTATIONS",
    "all_blocks_attention",
    "circular_long_conv",
    "delta_rule_without_erase",
    "exclusive_linear_attention",
    "gated_linear_attention_without_decay",
    "generalized_delta_rule_without_removal",
    "log_linear_attention_without_levels",
    "memory_gd_without_update",
    "mimo_ssd_without_decay",
    "mlstm_without_forget",
    "multi_token_attention_without_convolution",
    "mutate_op",
    "no_decay_log_scan",
    "no_decay_recurrence",
    "no_decay_selective_scan",
    "nystrom_as_softmax_attention",
    "ssd_without_decay",
    "stateless_causal_conv1d",
    "undamped_ema",
    "ungated_rms_norm",
    "uniform_sdpa",
    "unmasked_sdpa",
    "unnormalized_rms_norm",
    "variant_as_softmax_attention",
]


def unmasked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, **ignored: Any
) -> torch.Tensor:
    """Softmax attention that ignores causality, windows, masks, positions and soft-capping (GQA kept).

    q ``[B, Hq, Tq, D]``, k ``[B, Hk, Tk, D]``, v ``[B, Hk, Tk, Dv]`` -> ``[B, Hq, Tq, Dv]``.
    """
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, Hq, Tk, D)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, Hq, Tq, Tk)
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def ungated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
) -> torch.Tensor:
    """Gated RMSNorm without its gate: ``RMSNorm_g(x) * weight`` (``z`` ignored); same arguments as the op."""
    from edifice.ops.norm import gated_rms_norm_reference

    # A constant gate scales x by SiLU(2) everywhere, which the norm divides out (up to eps): the ungated norm.
    return gated_rms_norm_reference(x, torch.full_like(z, 2.0), weight, eps, group_size)


def uniform_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **ignored: Any) -> torch.Tensor:
    """Attention without scores: every query takes the plain mean of all values (no ``q k^T``, no masks; GQA kept).

    The default mutation of ``sdpa``. :func:`unmasked_sdpa` only drops masks and positions, which changes nothing for
    attention that has none (a ViT's, an encoder's without padding); without the scores, no attention survives.
    q ``[B, Hq, Tq, D]``, k ``[B, Hk, Tk, D]``, v ``[B, Hk, Tk, Dv]`` -> ``[B, Hq, Tq, Dv]``.
    """
    groups = q.shape[1] // k.shape[1]
    mean = v.float().mean(dim=2, keepdim=True).repeat_interleave(groups, dim=1)  # (B, Hq, 1, Dv)
    return mean.expand(q.shape[0], q.shape[1], q.shape[2], v.shape[-1]).to(q.dtype)


def variant_as_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    attn_mask: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    scale: float | None = None,
    **ignored: Any,
) -> torch.Tensor:
    """``variant_attention`` collapsed to plain softmax attention: no sigmoid/softpick, gate bias, logit bias or exp(V).

    Masking and GQA are kept, so only the variant's own mechanism is lost. Shapes as ``ops.sdpa``.
    """
    from edifice.ops.attention import sdpa_reference

    return sdpa_reference(
        q,
        k,
        v,
        causal=causal,
        window=window,
        attn_mask=attn_mask,
        q_positions=q_positions,
        k_positions=k_positions,
        scale=scale,
    )


def all_blocks_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, *, block_size: int, **kwargs: Any
) -> torch.Tensor:
    """``block_sparse_attention`` ignoring the selection: dense attention under the same causal and padding masks."""
    from edifice.ops.attention import sdpa_reference

    return sdpa_reference(q, k, v, **kwargs)


def no_decay_recurrence(
    a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None, **ignored: Any
) -> torch.Tensor:
    """The linear recurrence with ``a_t = 1``: ``h_t = h_{t-1} + b_t``, a running sum that forgets nothing.

    b ``[B, T, ...]`` (time on dim 1), initial ``[B, ...]`` -> h ``[B, T, ...]``.
    """
    h = torch.cumsum(b.float(), dim=1)
    if initial is not None:
        h = h + initial.float().unsqueeze(1)
    return h.to(b.dtype)


def no_decay_log_scan(
    log_a: torch.Tensor, log_b: torch.Tensor, log_initial: torch.Tensor | None = None, **ignored: Any
) -> torch.Tensor:
    """The log-space scan with ``a_t = 1``: ``log h_t = logcumsumexp(log b)_t``, a running sum that forgets nothing.

    log_b ``[B, T, ...]`` (time on dim 1), log_initial ``[B, ...]`` -> log h ``[B, T, ...]``.
    """
    log_h = torch.logcumsumexp(log_b.float(), dim=1)
    if log_initial is not None:
        log_h = torch.logaddexp(log_h, log_initial.float().unsqueeze(1))
    return log_h.to(log_b.dtype)


def unnormalized_rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, **ignored: Any
) -> torch.Tensor:
    """RMSNorm without the normalisation: ``x * weight``."""
    return x * weight if weight is not None else x.clone()


def stateless_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    **ignored: Any,
) -> torch.Tensor:
    """A causal depthwise convolution that ignores ``initial_state`` (as if every chunk started a new sequence).

    x ``[B, T, C]``, weight ``[C, K]`` -> ``[B, T, C]``.
    """
    channels, width = weight.shape
    xt = F.pad(x.transpose(1, 2), (width - 1, 0))  # (B, C, K - 1 + T)
    y = F.conv1d(xt, weight.unsqueeze(1), bias, groups=channels)  # (B, C, T)
    return y.transpose(1, 2)


def delta_rule_without_erase(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    **ignored: Any,
) -> Any:
    """The (gated) delta rule without its erase term ``-β k kᵀ S``: (gated) linear attention ``S_t = α_t S_{t-1} +
    β_t k_t v_tᵀ``, which only accumulates and never corrects what a key already stores.

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, beta and g ``[B, T, H]`` -> ``(o [B, T, H, V], state [B, H, K, V])``.
    """
    from edifice.ops.recurrence import linear_recurrence_reference

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    decay = torch.ones_like(beta) if g is None else g.float().exp()
    writes = (beta[..., None, None] * k[..., :, None] * v[..., None, :]).float()  # (B, T, H, K, V)
    states = linear_recurrence_reference(decay[..., None, None], writes, initial_state)
    o = torch.einsum("bthkv,bthk->bthv", states, q.float() * scale)
    return o.to(v.dtype), states[:, -1]


def exclusive_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None, **kwargs: Any
) -> Any:
    """Linear attention whose query reads the state *before* its own write, ``o_t = S_{t-1}ᵀ q_t``: the causal mask
    loses its diagonal (the current token's key-value pair), with or without a decay -- so the mutation breaks every
    caller, including those without decay.

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]`` -> ``(o [B, T, H, V], state [B, H, K, V])``.
    """
    from edifice.ops.linear_attention import linear_attention_reference

    o, state = linear_attention_reference(q, k, v, g, **kwargs)
    scale = kwargs.get("scale") or q.shape[-1] ** -0.5
    own = (q.float() * k.float()).sum(-1, keepdim=True) * scale * v.float()  # (B, T, H, V): q_tᵀ k_t v_t
    return (o.float() - own).to(o.dtype), state


def gated_linear_attention_without_decay(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, **kwargs: Any
) -> Any:
    """Gated linear attention with ``g = 0`` (``α_t = 1``): the state only accumulates, never forgets.

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H, K]`` -> ``(o [B, T, H, V], state [B, H, K, V])``.
    """
    from edifice.ops.linear_attention import gated_linear_attention_reference

    return gated_linear_attention_reference(q, k, v, torch.zeros_like(g), **kwargs)


def generalized_delta_rule_without_removal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor,
    **kwargs: Any,
) -> Any:
    """The generalized delta rule without its removal term ``b_t a_tᵀ S_{t-1}``: gated linear attention
    ``S_t = diag(e^{g_t}) S_{t-1} + k_t v_tᵀ`` (RWKV-6's state update), which decays but never corrects what a key
    already stores.

    q, k, a, b, g ``[B, T, H, K]``, v ``[B, T, H, V]`` -> ``(o [B, T, H, V], state [B, H, K, V])``.
    """
    from edifice.ops.linear_attention import gated_linear_attention_reference

    return gated_linear_attention_reference(q, k, v, g, **kwargs)


def ssd_without_decay(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, **kwargs: Any
) -> Any:
    """Mamba-2's SSD with ``A = 0``: the state never decays, so the layer is plain (dt-scaled) linear attention.

    x ``[B, T, H, P]``, dt ``[B, T, H]``, A ``[H]``, B/C ``[B, T, G, N]`` -> y ``[B, T, H, P]`` (or ``(y, state)``).
    """
    from edifice.ops.ssd import ssd_reference

    return ssd_reference(x, dt, torch.zeros_like(A), B, C, **kwargs)


def mimo_ssd_without_decay(
    x: torch.Tensor, log_a: torch.Tensor, B: torch.Tensor, C: torch.Tensor, **kwargs: Any
) -> Any:
    """The MIMO SSD with ``log_a = 0``: the state never decays, so the layer is plain multi-rank linear attention.

    x ``[B, T, R, H, P]``, log_a ``[B, T, H]``, B ``[B, T, R, G, N]``, C ``[B, T, S, G, N]`` -> y ``[B, T, S, H, P]``
    (or ``(y, state)``).
    """
    from edifice.ops.mimo_ssd import mimo_ssd_reference

    return mimo_ssd_reference(x, torch.zeros_like(log_a), B, C, **kwargs)


def mlstm_without_forget(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, *args: Any, **kwargs: Any
) -> Any:
    """The mLSTM with its forget gate stuck open (``f_t = 1``): the matrix memory only accumulates, never forgets.

    q, k ``[B, H, T, K]``, v ``[B, H, T, V]``, i and f ``[B, H, T]`` -> ``(h [B, H, T, V], (C, n, m))``.
    """
    from edifice.ops.mlstm import mlstm_reference

    return mlstm_reference(q, k, v, i, torch.full_like(f, torch.inf), *args, **kwargs)


def memory_gd_without_update(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, memory: Any, lr: torch.Tensor, *args: Any, **kwargs: Any
) -> Any:
    """Test-time gradient descent that skips the gradient step (``lr = 0``): the memory never learns from the
    sequence, it only reads (and, with a retention gate, decays) its initial weights.

    Same layout as ``edifice.ops.memory_gd`` (q, k ``[B, T, H, Dk]``, v ``[B, T, H, Dv]``, lr ``[B, T, H]``).
    """
    from edifice.ops.memory_gd import memory_gd_reference

    return memory_gd_reference(q, k, v, memory, torch.zeros_like(lr), *args, **kwargs)


def no_decay_selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """Selective scan with ``A = 0``, so ``Ā = exp(Δ A) = 1``: the state sums ``Δ B u`` and never forgets.

    Same layout as ``edifice.ops.selective_scan`` (u ``[B, T, D]``, A ``[D, N]``, ...).
    """
    from edifice.ops.selective_scan import selective_scan_reference

    return selective_scan_reference(u, delta, torch.zeros_like(A), *args, **kwargs)


def circular_long_conv(
    u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None, **ignored: Any
) -> torch.Tensor:
    """The long convolution without zero padding: a circular convolution, so late inputs wrap into early outputs.

    u ``[B, T, D]``, k ``[D, L]`` or ``[B, D, L]``, skip ``[D]`` -> ``[B, T, D]``.
    """
    T = u.shape[1]
    k = k[..., :T].float()
    y: torch.Tensor = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2).float(), n=T) * torch.fft.rfft(k, n=T), n=T)
    y = y.transpose(1, 2)  # (B, T, D)
    if skip is not None:
        y = y + skip.float() * u.float()
    return y.to(u.dtype)


def log_linear_attention_without_levels(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, level_scales: torch.Tensor, **kwargs: Any
) -> Any:
    """Log-linear attention with every level weight ``λ = 1``: the Fenwick hierarchy gone, plain Mamba-2 attention.

    q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]``, level_scales ``[B, T, H, L]`` -> ``(o, state)``.
    """
    from edifice.ops.log_linear_attention import log_linear_attention_reference

    return log_linear_attention_reference(q, k, v, g, torch.ones_like(level_scales), **kwargs)


def nystrom_as_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **ignored: Any) -> torch.Tensor:
    """Exact softmax attention ``softmax(q kᵀ) v`` in place of the Nyström approximation (no landmarks, no pinv).

    q, k ``[B, H, T, D]`` (already scaled), v ``[B, H, T, Dv]`` -> ``[B, H, T, Dv]``.
    """
    return ((q.float() @ k.float().transpose(-1, -2)).softmax(dim=-1) @ v.float()).to(v.dtype)


def multi_token_attention_without_convolution(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """Causal softmax attention with the same masking but no key-query or head-mixing convolution (MTA's kernels
    ignored). Shapes as ``ops.multi_token_attention``."""
    from edifice.ops.multi_token_attention import multi_token_attention_reference

    kwargs = {key: value for key, value in kwargs.items() if key not in ("kq_weight", "head_weight")}
    return multi_token_attention_reference(q, k, v, None, None, **kwargs)


def undamped_ema(x: torch.Tensor, alpha: torch.Tensor, delta: torch.Tensor, eta: torch.Tensor, **kwargs: Any) -> Any:
    """The damped EMA with ``δ = 0`` and ``θ = 0``: ``q = 1``, so each state sums ``α β x`` and never forgets.

    Same layout as ``edifice.ops.damped_ema`` (x ``[B, T, D]``, alpha/delta/eta ``[D, N]``) -> ``(y, state)``.
    """
    from edifice.ops.damped_ema import damped_ema_reference

    if kwargs.get("theta") is not None:
        kwargs["theta"] = torch.zeros_like(kwargs["theta"])
    return damped_ema_reference(x, alpha, torch.zeros_like(delta), eta, **kwargs)


#: The ready-made wrong implementation of each op, used when ``mutate_op`` is given none.
MUTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "mlstm": mlstm_without_forget,
    "delta_rule": delta_rule_without_erase,
    "gated_delta_rule": delta_rule_without_erase,
    "linear_attention": exclusive_linear_attention,
    "gated_linear_attention": gated_linear_attention_without_decay,
    "generalized_delta_rule": generalized_delta_rule_without_removal,
    "sdpa": uniform_sdpa,
    "variant_attention": variant_as_softmax_attention,
    "block_sparse_attention": all_blocks_attention,
    "ssd": ssd_without_decay,
    "mimo_ssd": mimo_ssd_without_decay,
    "linear_recurrence": no_decay_recurrence,
    "log_scan": no_decay_log_scan,
    "rms_norm": unnormalized_rms_norm,
    "gated_rms_norm": ungated_rms_norm,
    "causal_conv1d": stateless_causal_conv1d,
    "long_conv": circular_long_conv,
    "damped_ema": undamped_ema,
    "log_linear_attention": log_linear_attention_without_levels,
    "selective_scan": no_decay_selective_scan,
    "memory_gd": memory_gd_without_update,
    "nystrom_attention": nystrom_as_softmax_attention,
    "multi_token_attention": multi_token_attention_without_convolution,
}


@contextlib.contextmanager
def mutate_op(op: str, wrong_impl: Callable[..., Any] | None = None) -> Iterator[Callable[..., Any]]:
    """Within the block, every call of ``edifice.ops.<op>`` runs ``wrong_impl`` (default: ``MUTATIONS[op]``)."""
    from edifice import ops

    if wrong_impl is None:
        if op not in MUTATIONS:
            known = ", ".join(MUTATIONS)
            raise ValueError(f"mutate_op: no ready-made wrong implementation of {op!r} (known: {known}); pass one")
        wrong_impl = MUTATIONS[op]
    with ops.swap(op, wrong_impl):
        yield wrong_impl
