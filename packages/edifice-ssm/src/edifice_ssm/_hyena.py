"""Pieces the Hyena family shares (``hyena``, ``striped_hyena``, ``hyena_v2``, ``h3``).

* :func:`fir_step` -- continue a causal FIR convolution ``y_t = Σ_j k_j x_{t-j}`` from the last ``L - 1`` inputs:
  the constant-size decoding state of every explicit (or materialized implicit) filter of length ``L``;
* :class:`GatedConvMixer` -- the Hyena order-2 block of StripedHyena 1 and 2: a dense projection to ``(q, k, v)``
  through a short depthwise "featurizer" FIR, then ``q ⊙ (h * (k ⊙ v) + D (k ⊙ v))`` with a pluggable inner filter
  ``h`` (:class:`InnerFilter`: modal, real modal, explicit), then an output projection;
* :class:`StripedBackbone` -- a stack of pre-norm residual blocks, each a mixer (a gated convolution or attention with
  RoPE) and a gated MLP, as StripedHyena stripes them;
* :func:`gpt2_init_` -- the GPT-2 initialisation the Hyena family's training code applies to every model.

Legend: ``B`` batch, ``T`` time, ``D`` channels (``d_model``), ``L`` filter length, ``S`` modal states per channel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_ssm.configs.striped_hyena import StripedBlockConfig

__all__ = [
    "GatedConvMixer",
    "GatedConvState",
    "InnerFilter",
    "StripedBackbone",
    "check_mixer_input",
    "fir_step",
    "gpt2_init_",
]


def fir_step(x: Tensor, kernel: Tensor, history: Tensor, skip: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``y_t = Σ_{j<L} kernel[:, j] x_{t-j} (+ skip x_t)`` for ``t >= 1`` new inputs ``x [B, t, C]``.

    ``history [B, C, L-1]`` holds the ``L - 1`` inputs before ``x`` (oldest first); returns ``(y [B, t, C], new
    history)``. Computed by :func:`edifice.ops.causal_conv1d` (whose ``weight[:, -1]`` meets the current input, so the
    kernel is flipped) in fp32; ``y`` has ``x``'s dtype, the history ``history``'s.
    """
    L = kernel.shape[-1]
    x32 = x.float()
    y = ops.causal_conv1d(x32, kernel.float().flip(-1), None, history.float())  # (B, t, C)
    if skip is not None:
        y = y + skip.float() * x32
    return y.to(x.dtype), ops.causal_conv1d_state(x, history.to(x.dtype), L).to(history.dtype)


def check_mixer_input(name: str, x: Tensor, d_model: int) -> None:
    """Raise a ``ValueError`` naming the expected layout unless ``x`` is a floating ``[B, T, d_model]`` tensor."""
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != d_model or not x.is_floating_point():
        got = f"{str(x.dtype).removeprefix('torch.')} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: x expected a floating tensor [B, T, {d_model}], got {got}")


def gpt2_init_(model: nn.Module, *, std: float, n_layers: int, residual: Iterable[nn.Linear] = ()) -> None:
    """GPT-2's scheme: every ``nn.Linear``/``nn.Embedding`` weight ``N(0, std²)``, zero Linear biases, and the
    ``residual`` output projections ``N(0, std² / (2 n_layers))`` (two residual branches per block)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
        for linear in residual:
            nn.init.normal_(linear.weight, std=std / math.sqrt(2 * n_layers))


# -- the gated convolution (Hyena order 2) ------------------------------------------------------------------------
class InnerFilter(nn.Module):
    """The long filter of a :class:`GatedConvMixer`: ``filter(x [B, T, D], state=None) -> [B, T, D]``.

    Without a state it runs the parallel form of ``h * x + D x`` from a zero history; with a state (from
    :meth:`init_state`, constant size) the recurrent or windowed form, updating the state in place.
    """

    def forward(self, x: Tensor, *, state: Tensor | None = None) -> Tensor:
        """The causal convolution of ``x`` with the filter (plus its skip term)."""
        raise NotImplementedError

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """A zero decoding state."""
        raise NotImplementedError


@model_output
class GatedConvState:
    """Decoding state of one :class:`GatedConvMixer`; both tensors have a constant size and are updated in place."""

    featurizer: Tensor
    """``[B, 3D, K-1]``: the last inputs of the featurizer FIR (oldest first)."""
    filter: Tensor
    """The inner filter's state: a FIR history ``[B, D, L-1]`` or a modal state ``[B, D, S(, 2)]`` (fp32)."""


class GatedConvMixer(nn.Module):
    """``W_out (q ⊙ (h * (k ⊙ v) + D k ⊙ v))``, ``(q, k, v) = split(h_feat * (W_in u))``: ``[B, T, D] -> [B, T, D]``.

    The Hyena operator of order 2 as StripedHyena builds it: ``in_proj`` (``D -> 3D``), a depthwise causal FIR of
    ``short_filter_length`` taps on all ``3D`` channels (the featurizer), the inner filter ``h`` on ``k ⊙ v``, the gate
    ``q`` and ``out_proj``. Padding (``mask`` False) is zeroed before and after the featurizer, so padded positions add
    nothing to either convolution's history (left padding gives the unpadded result).
    """

    def __init__(
        self,
        d_model: int,
        inner: InnerFilter,
        *,
        short_filter_length: int = 3,
        short_filter_bias: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if d_model <= 0 or short_filter_length <= 0:
            raise ValueError(
                f"GatedConvMixer: d_model and short_filter_length must be > 0, got {d_model}, {short_filter_length}"
            )
        self.d_model = d_model
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.featurizer = CausalDepthwiseConv1d(3 * d_model, short_filter_length, bias=short_filter_bias)
        self.filter = inner
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GatedConvState:
        """Zero histories; the size does not depend on ``max_len`` (constant-size state)."""
        device = self.in_proj.weight.device if device is None else device
        return GatedConvState(
            featurizer=self.featurizer.init_state(batch_size, device=device, dtype=dtype),
            filter=self.filter.init_state(batch_size, device=device, dtype=dtype),
        )

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: GatedConvState | None = None,
    ) -> Tensor:
        """Mix ``x [B, T, D]``; ``mask [B, T]`` marks valid positions; ``state`` is continued and updated in place."""
        check_mixer_input("GatedConvMixer", x, self.d_model)
        keep = None if mask is None else mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        z = self.in_proj(x)  # (B, T, 3D)
        if keep is not None:
            z = z * keep
        if state is None:
            z = self.featurizer(z)
        else:
            z, history = self.featurizer.step(z, state.featurizer)
            state.featurizer.copy_(history)
        if keep is not None:
            z = z * keep  # the featurizer's bias must not leak into the long filter's history at padded positions
        q, k, v = z.chunk(3, dim=-1)  # (B, T, D) each
        y = q * self.filter(k * v, state=None if state is None else state.filter)
        return self.out_proj(y)  # type: ignore[no-any-return]


# -- striped stacks -------------------------------------------------------------------------------------------------
class StripedBackbone(SequenceBackbone):
    """Pre-norm residual blocks ``h + Mixer(RMSNorm(h))``, ``h + MLP(RMSNorm(h))`` whose mixers alternate kinds.

    Subclasses choose each layer's mixer in :meth:`build_mixer`; this class wraps it with the gated MLP, builds the
    attention mixers (grouped-query attention with RoPE over the whole head) and applies the GPT-2 init.
    """

    config_class: ClassVar[type[ArchConfig]] = StripedBlockConfig
    config: StripedBlockConfig

    def __init__(self, config: StripedBlockConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_mixer(self, index: int) -> nn.Module:
        """The token mixer of layer ``index``; every subclass implements this."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_mixer(index)")

    def attention_mixer(self) -> Attention:
        """Causal (grouped-query) self-attention with RoPE on the full head dimension."""
        c = self.config
        head_dim = c.d_model // c.n_heads
        return Attention(
            c.d_model,
            c.n_heads,
            n_kv_heads=c.n_kv_heads,
            rope=RotaryEmbedding(head_dim, base=c.rope_base),
            bias=c.attn_bias,
            dropout=c.dropout,
        )

    def build_layer(self, index: int) -> nn.Module:
        """``TransformerBlock(mixer, GatedFeedForward)`` with RMSNorms."""
        c = self.config
        ffn = GatedFeedForward(c.d_model, c.ffn_size, activation=c.activation, bias=False)
        return TransformerBlock(
            c.d_model, self.build_mixer(index), ffn, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout
        )

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    def reset_parameters(self) -> None:
        """Each layer's own init (filters, featurizers, norms), then the GPT-2 scheme on every Linear/embedding."""
        super().reset_parameters()
        residual: list[nn.Linear] = []
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock)
            mixer: Any = layer.mixer
            residual.append(mixer.o_proj if isinstance(mixer, Attention) else mixer.out_proj)
            assert isinstance(layer.ffn, GatedFeedForward)
            residual.append(layer.ffn.down_proj)
        gpt2_init_(self, std=self.config.init_std, n_layers=self.config.n_layers, residual=residual)
