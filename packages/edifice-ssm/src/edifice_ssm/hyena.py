"""Hyena: a stack of order-N Hyena operators, implicit long convolutions interleaved with data-controlled gates.

Each layer is a GPT-style pre-norm block, ``h + Hyena(LayerNorm(h))`` then ``h + MLP(LayerNorm(h))``, with the
attention of a Transformer replaced by the Hyena operator. The operator projects its input to ``N + 1`` sequences,
filters each with a short depthwise causal convolution, then alternates element-wise gates with long causal
convolutions whose filters are *implicit*: an FFN of positional features, multiplied by an exponential-decay window,
so a filter as long as the sequence costs a handful of parameters. The long convolutions run by FFT
(:func:`edifice.ops.long_conv`), ``O(T log T)``.

Paper: Michael Poli, Stefano Massaroli, Eric Nguyen, Daniel Y. Fu, Tri Dao, Stephen Baccus, Yoshua Bengio, Stefano
Ermon, Christopher Ré (2023), "Hyena Hierarchy: Towards Larger Convolutional Language Models", ICML 2023,
https://arxiv.org/abs/2302.10866.

Equations (order ``N``, width ``D``; per channel, ``*`` a causal convolution over time, §2 eq. (1))::

    (x^1, ..., x^N, v) = split(h_short * (W_in u + b_in))          Algorithm 1: projection + short depthwise filters
    z^1 = x^1 ⊙ v                                                  Definition 3.1 with h^1 = δ (see below)
    z^n = x^n ⊙ (h^n * z^{n-1} + D^n ⊙ z^{n-1}),   n = 2 .. N      Definition 3.1 / Algorithm 3, FFT convolutions
    y   = W_out z^N + b_out
    h^n_t = Window(t) · FFN(PositionalEncoding(t))_n               §3.3 / Algorithm 2, t = 0 .. L-1
    PositionalEncoding(t) = [t/(L-1), cos(f_k ω_t), -sin(f_k ω_t)]  ω_t = 2π t / L, f_k = linspace(1e-4, K-1, K)
    FFN = Linear -> Sin -> (Linear -> Sin) x filter_depth -> Linear,  Sin(x) = sin(w ⊙ x), w learned
    Window(t) = exp(-α_c t/(L-1)),  α_c = linspace(|ln target|/slow, |ln target|/fast) over the D channels

``L = max_len`` is the filter length (the reference's ``l_max``): a call on ``T`` positions uses the first
``min(T, L)`` taps, so the filter's length follows ``T`` and a shorter filter is the prefix of a longer one.
``D^n`` is the per-channel skip ("bias") of each long convolution.

Decoding: every tap of a filter is known in advance, so the operator steps with a constant-size state: the last
``short_filter_size - 1`` inputs of the short convolution and the last ``max_len - 1`` inputs of each of the ``N - 1``
long convolutions (a window of ``max_len`` positions, :func:`edifice_ssm._hyena.fir_step`). Stepping reproduces
``forward`` exactly, at any length (longer inputs see the last ``max_len`` positions in both forms).

Initialisation: GPT-2's scheme, as the reference training code applies it to every Linear (filter FFN included):
``N(0, 0.02²)`` weights, zero biases, output projections (``out_proj`` and the MLP's ``down_proj``) ``N(0, 0.02² /
(2 n_layers))``; the filter skips ``D ~ N(0, 1)``, sine frequencies ``w = filter_sine_freq``; the window rates are
fixed (not trained). LayerNorms start at one/zero.

Deviations from the authors' code (``safari``):

* Definition 3.1 has ``N`` filters after ``z^1 = v``; the authors' implementation -- followed here -- makes the first
  one the identity (the short filters of Algorithm 1 play its role) and gives the remaining ``N - 1`` implicit
  filters, so order 2 is ``x^2 ⊙ (h * (x^1 ⊙ v))``, the H3-like form the paper's models use.
* The positional features are fixed functions of ``t`` (the paper's); the code stores them as a parameter with its
  own (small) learning rate.
* Each filter ``h^n`` gets the full range of window rates over its ``D`` channels; the code spreads one range over
  all ``(N-1) D`` filter channels interleaved.
* The multi-head, multi-block and ``post_order_ffn`` options of the code are not implemented.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.ffn import FeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_ssm._hyena import check_mixer_input, fir_step, gpt2_init_
from edifice_ssm.configs.hyena import HyenaConfig

__all__ = ["Hyena", "HyenaFilter", "HyenaOperator", "HyenaState", "Sin"]


class Sin(nn.Module):
    """``sin(w ⊙ x)`` with a learned frequency per feature (the implicit filter's activation)."""

    def __init__(self, dim: int, freq: float = 1.0) -> None:
        super().__init__()
        self.init_freq = freq
        self.freq = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every frequency starts at ``freq``."""
        nn.init.constant_(self.freq, self.init_freq)

    def forward(self, x: Tensor) -> Tensor:
        """Apply ``sin(freq * x)`` over the last dimension."""
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """``n_filters`` implicit long filters of ``channels`` channels and ``max_len`` taps (§3.3, Algorithm 2).

    ``h_t = Window(t) · FFN(PositionalEncoding(t))``; :meth:`kernel` evaluates the first ``min(length, max_len)`` taps
    in fp32 as ``[n_filters, channels, L]``. ``bias [n_filters, channels]`` is each filter's skip term ``D``.
    """

    def __init__(
        self,
        n_filters: int,
        channels: int,
        max_len: int,
        *,
        emb_dim: int = 3,
        width: int = 64,
        depth: int = 2,
        sine_freq: float = 1.0,
        modulate: bool = True,
        fast_decay: float = 0.3,
        slow_decay: float = 1.5,
        target: float = 1e-2,
    ) -> None:
        super().__init__()
        if min(n_filters, channels, max_len, width) <= 0 or depth < 0:
            raise ValueError(
                f"HyenaFilter: n_filters, channels, max_len and width must be > 0 and depth >= 0, got {n_filters}, "
                f"{channels}, {max_len}, {width}, {depth}"
            )
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"HyenaFilter: emb_dim must be odd and >= 3, got {emb_dim}")
        if not (0 < target < 1 and fast_decay > 0 and slow_decay > 0):
            raise ValueError("HyenaFilter: the window needs 0 < target < 1 and positive fast/slow decay times")
        self.n_filters, self.channels, self.max_len, self.emb_dim = n_filters, channels, max_len, emb_dim
        self.modulate = modulate
        self.fast_decay, self.slow_decay, self.target = fast_decay, slow_decay, target
        self.act = Sin(width, sine_freq)  # one shared activation (and frequency vector), as the reference code has
        dims = [emb_dim] + [width] * (depth + 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.out = nn.Linear(width, n_filters * channels, bias=False)
        self.bias = nn.Parameter(torch.empty(n_filters, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's Linear init for the FFN, ``D ~ N(0, 1)``, the sine frequencies at their initial value."""
        for module in (*self.layers, self.out, self.act):
            module.reset_parameters()
        nn.init.normal_(self.bias)

    def positional_encoding(self, length: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """``(z [L, emb_dim], t [L, 1])`` for ``t = 0 .. L-1`` of ``max_len``: normalized time, then cos/sin bands."""
        M = self.max_len
        steps = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (L, 1)
        t = steps / max(M - 1, 1)  # normalized time in [0, 1] over the full filter
        bands = (self.emb_dim - 1) // 2
        f = torch.linspace(1e-4, bands - 1, bands, device=device, dtype=torch.float32)[None]  # (1, K)
        w = 2 * math.pi * steps / M  # (L, 1)
        z = torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1)  # Re, Im of exp(-i f w)
        return z, t

    def decay_rates(self, device: torch.device | None = None) -> Tensor:
        """The window's rates ``α [channels]`` (fp32): from ``|ln target| / slow`` to ``|ln target| / fast``."""
        lo, hi = -math.log(self.target) / self.slow_decay, -math.log(self.target) / self.fast_decay
        return torch.linspace(lo, hi, self.channels, device=device, dtype=torch.float32)

    def window(self, t: Tensor) -> Tensor:
        """``exp(-α t)`` for normalized times ``t [L, 1]``: ``[L, channels]``."""
        return torch.exp(-t * self.decay_rates(t.device))

    def kernel(self, length: int) -> Tensor:
        """The filters' first ``min(length, max_len)`` taps, fp32 ``[n_filters, channels, L]``."""
        L = min(length, self.max_len)
        z, t = self.positional_encoding(L, self.bias.device)
        h = z
        for linear in self.layers:  # the FFN in fp32, whatever the parameters' dtype
            assert isinstance(linear, nn.Linear)
            h = self.act(F.linear(h, linear.weight.float(), linear.bias.float())).float()
        h = F.linear(h, self.out.weight.float()).float().view(L, self.n_filters, self.channels)  # (L, n, C)
        if self.modulate:
            h = h * self.window(t)[:, None, :]
        kernel: Tensor = h.permute(1, 2, 0)  # (n, C, L)
        return kernel

    def forward(self, length: int) -> Tensor:
        """Same as :meth:`kernel`."""
        return self.kernel(length)


@model_output
class HyenaState:
    """Decoding state of one :class:`HyenaOperator`: constant size, updated in place by each step."""

    short: Tensor
    """``[B, (N+1) D, K-1]``: the last inputs of the short depthwise convolution."""
    long: Tensor
    """``[B, N-1, D, max_len-1]``: the last inputs of each long convolution (oldest first)."""


class HyenaOperator(nn.Module):
    """The order-N Hyena operator ``[B, T, D] -> [B, T, D]`` (see the module docstring), causal and stateful.

    Follows the sequence-mixer protocol (``mixer(x, *, mask, positions, state)``, ``init_state``); registered as the
    ``hyena`` block. Padding (``mask`` False) is zeroed before and after the short convolution, so padded positions
    add nothing to any convolution's history.
    """

    def __init__(
        self,
        d_model: int,
        *,
        order: int = 2,
        max_len: int = 1024,
        short_filter_size: int = 3,
        filter_width: int = 64,
        filter_depth: int = 2,
        filter_emb_dim: int = 33,
        filter_sine_freq: float = 14.0,
        modulate: bool = True,
        window_fast_decay: float = 0.3,
        window_slow_decay: float = 1.5,
        window_target: float = 1e-2,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if order < 2:
            raise ValueError(f"HyenaOperator: order must be >= 2, got {order}")
        if d_model <= 0 or short_filter_size <= 0:
            raise ValueError(
                f"HyenaOperator: d_model and short_filter_size must be > 0, got {d_model}, {short_filter_size}"
            )
        self.d_model, self.order, self.max_len = d_model, order, max_len
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width, bias=bias)
        self.short_conv = CausalDepthwiseConv1d(width, short_filter_size)
        self.filter = HyenaFilter(
            order - 1,
            d_model,
            max_len,
            emb_dim=filter_emb_dim,
            width=filter_width,
            depth=filter_depth,
            sine_freq=filter_sine_freq,
            modulate=modulate,
            fast_decay=window_fast_decay,
            slow_decay=window_slow_decay,
            target=window_target,
        )
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    @classmethod
    def from_config(cls, config: HyenaConfig) -> HyenaOperator:
        """The operator a :class:`HyenaConfig` describes."""
        return cls(
            config.d_model,
            order=config.order,
            max_len=config.max_len,
            short_filter_size=config.short_filter_size,
            filter_width=config.filter_width,
            filter_depth=config.filter_depth,
            filter_emb_dim=config.filter_emb_dim,
            filter_sine_freq=config.filter_sine_freq,
            modulate=config.modulate,
            window_fast_decay=config.window_fast_decay,
            window_slow_decay=config.window_slow_decay,
            window_target=config.window_target,
            bias=config.bias,
            dropout=config.dropout,
        )

    def reset_parameters(self) -> None:
        """PyTorch's defaults for the projections and short convolution; the filter's own init."""
        for module in (self.in_proj, self.short_conv, self.filter, self.out_proj):
            module.reset_parameters()

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HyenaState:
        """Zero histories ``short [B, (N+1)D, K-1]`` (``dtype``) and ``long [B, N-1, D, max_len-1]`` (fp32; the
        operator's ``max_len``: the decoding ``max_len`` argument is unused, the state's size is constant)."""
        weight = self.in_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        long = torch.zeros(
            batch_size, self.order - 1, self.d_model, self.max_len - 1, device=device, dtype=torch.float32
        )
        return HyenaState(short=self.short_conv.init_state(batch_size, device=device, dtype=dtype), long=long)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: HyenaState | None = None,
    ) -> Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]``; ``mask [B, T]`` marks valid positions; ``state`` is updated in place."""
        check_mixer_input("HyenaOperator", x, self.d_model)
        T, D = x.shape[1], self.d_model
        keep = None if mask is None else mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        z = self.in_proj(x)  # (B, T, (N+1) D)
        if keep is not None:
            z = z * keep
        if state is None:
            z = self.short_conv(z)
        else:
            z, history = self.short_conv.step(z, state.short)
            state.short.copy_(history)
        if keep is not None:
            z = z * keep  # the short filters' bias must not reach a long filter's history at padded positions
        *gates, v = z.split(D, dim=-1)  # x^1 .. x^N, v: (B, T, D) each
        # In decoding every tap is needed (the history is max_len long); in training only the first T reach an output.
        kernels = self.filter.kernel(self.max_len if state is not None else T)  # (N-1, D, L) fp32
        skips = self.filter.bias  # (N-1, D)
        u = self.dropout(gates[0] * v)  # z^1
        for n in range(1, self.order):
            if state is None:
                u = ops.long_conv(u, kernels[n - 1], skips[n - 1])  # h^n * z^{n-1} + D^n z^{n-1}, by FFT
            else:
                u, history = fir_step(u, kernels[n - 1], state.long[:, n - 1], skips[n - 1])
                state.long[:, n - 1].copy_(history)
            u = self.dropout(gates[n] * u)  # z^n
        return self.out_proj(u)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, order={self.order}, max_len={self.max_len}"


class Hyena(SequenceBackbone):
    """Hyena language/sequence model: ``n_layers`` pre-norm blocks ``Hyena -> MLP`` and a final LayerNorm."""

    config_class: ClassVar[type[ArchConfig]] = HyenaConfig
    config: HyenaConfig

    def __init__(self, config: HyenaConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """``h + Hyena(LN(h))``, ``h + MLP(LN(h))`` (the GPT block with attention replaced)."""
        c = self.config
        ffn = FeedForward(c.d_model, c.ffn_size, activation=c.activation, bias=True)
        return TransformerBlock(
            c.d_model, HyenaOperator.from_config(c), ffn, norm="layernorm", norm_eps=c.norm_eps, dropout=c.dropout
        )

    def build_norm(self) -> nn.Module:
        """The final LayerNorm."""
        return get_norm("layernorm", self.config.d_model, eps=self.config.norm_eps)

    def reset_parameters(self) -> None:
        """Each layer's own init, then GPT-2's on every Linear and embedding (see the module docstring)."""
        super().reset_parameters()
        residual: list[nn.Linear] = []
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.ffn, FeedForward)
            assert isinstance(layer.mixer, HyenaOperator)
            residual += [layer.mixer.out_proj, layer.ffn.down_proj]
        gpt2_init_(self, std=self.config.init_std, n_layers=self.config.n_layers, residual=residual)
