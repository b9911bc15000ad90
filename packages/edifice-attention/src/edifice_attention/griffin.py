"""Griffin and Hawk: residual blocks of a real-gated linear recurrence (RG-LRU) and local multi-query attention.

Paper: Soham De, Samuel L. Smith, Anushan Fernando, Aleksandar Botev, George Cristian-Muraru, Albert Gu, Ruba
Haroun, Leonard Berrada, Yutian Chen, Srivatsan Srinivasan, Guillaume Desjardins, Arnaud Doucet, David Budden, Yee
Whye Teh, Razvan Pascanu, Nando De Freitas and Caglar Gulcehre (2024), "Griffin: Mixing Gated Linear Recurrences with
Local Attention for Efficient Language Models", https://arxiv.org/abs/2402.19427; released as RecurrentGemma.

Implemented (§2, Fig. 2)::

    h = x + Temporal(RMSNorm(x));   y = h + MLP(RMSNorm(h))                        residual block (§2.1)
    MLP(x) = W_d (GeLU(W_g x + b_g) ⊙ (W_u x + b_u)) + b_d,   branch width 3·D      gated MLP (§2.2)
    Temporal = recurrent block (§2.3, Fig. 2):
        out = W_o (GeLU(W_y x + b_y) ⊙ RG-LRU(Conv1D(W_x x + b_x))) + b_o           Conv1D: depthwise, width 4
      RG-LRU (§2.4), elementwise over D_RNN channels, the block's output is h_t:
        r_t = σ(W_a x_t + b_a)                        recurrence gate          (eq. 1)
        i_t = σ(W_x x_t + b_x)                        input gate               (eq. 2)
        a_t = a^{c r_t},  a = σ(Λ),  c = 8            (eq. 3), computed in log space: log a_t = -c r_t softplus(-Λ)
        h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ x_t)                       (eq. 4)
      or local multi-query attention (§2.3): causal softmax attention over the last ``window`` positions, one
      key/value head, RoPE on the first half of each head's features, biased output projection.

The gates' weights are block-diagonal with ``n_heads`` blocks (the released code's ``BlockDiagonalLinear``). The
recurrence ``h_t = a_t h_{t-1} + b_t`` is :func:`edifice.ops.linear_recurrence` (a parallel scan over a sequence, one
update per decoding step), in fp32. ``griffin`` cycles ``block_types`` (two recurrent blocks, then one local-attention
block, §2.1); ``hawk`` is this same class with recurrent blocks only (§2: "Hawk").

Initialisation (§2.4 and the released code): Λ such that ``a^c`` is uniform in [0.9, 0.999] (``lru_init="paper"``;
``"ring"`` draws ``a²`` of the base uniform in [0.9², 0.999²] as the released ``rnn_param_init`` does, which puts a^c
in [0.43, 0.99]); LeCun-normal weights with variance 1/fan_in, the final projection of every block at variance
``(2 / n_layers)/fan_in``, the gates at ``1/block_width``, the Conv1D at ``0.01/width``, biases zero, embeddings
``N(0, 1/D)``.

Faithful to RecurrentGemma (transformers' ``RecurrentGemmaForCausalLM``, which :func:`from_recurrent_gemma` converts):
the reset at a segment start (position 0: ``h_{-1}`` is dropped and the input is not multiplied by ``sqrt(1 - a²)``),
the gradient of that square root bounded at 1000 (prevents NaN in bf16, the released code's
``SqrtBoundDerivative``), embeddings scaled by ``sqrt(D)`` rounded to bfloat16 when ``scale_embeddings``, logits
soft-capped when ``logits_soft_cap`` is set, biased linear layers and Conv1D, an MLP branch width of its
``intermediate_size // 2``, and transformers' local window (a query sees itself and ``window - 1`` earlier positions).

Deviations (docs/design/griffin.md): (1) the released code's local attention sees ``window + 1`` positions (itself and
``window`` before it); this entry follows transformers' and Mistral's definition, so a released checkpoint's
``attention_window_size`` is off by one against the JAX/PyTorch reference code (not against transformers). (2) The
default Λ initialisation is the paper's (a^c uniform), not the released code's ring; both are offered. (3) The paper's
presets neither scale embeddings nor soft-cap logits (RecurrentGemma does both): both are options, off by default.
(4) Padding is exact: a padded position leaves the state unchanged (``a = 1``, no input) and feeds the Conv1D a zero,
as before the first token; RecurrentGemma has no padding-exact recurrence.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.activations import get_activation
from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone, SequenceOutput
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice.outputs import model_output
from edifice_attention.configs.griffin import GriffinConfig, HawkConfig

__all__ = [
    "RGLRU",
    "BlockDiagonalLinear",
    "Griffin",
    "LocalAttention",
    "RecurrentBlock",
    "RecurrentBlockState",
    "from_recurrent_gemma",
    "lru_init",
    "sqrt_bounded_grad",
]

#: Largest gradient of ``sqrt`` in the RG-LRU's normalisation (the released code's ``_MAX_SQRT_GRADIENT``).
MAX_SQRT_GRADIENT = 1000.0


def sqrt_bounded_grad(x: Tensor) -> Tensor:
    """``sqrt(x)`` whose gradient ``1 / (2 sqrt(x))`` is capped at ``MAX_SQRT_GRADIENT`` (the value is exact)."""
    root = x.sqrt()
    slope = torch.rsqrt(torch.clamp(4.0 * x, min=1.0 / MAX_SQRT_GRADIENT**2)).detach()
    return root.detach() + (x - x.detach()) * slope


def lru_init(shape: tuple[int, ...], c: float, low: float, high: float, kind: str, generator: Any = None) -> Tensor:
    """Λ such that ``a = σ(Λ)`` has ``a^c`` uniform in [low, high] (``"paper"``) or ``a²`` uniform in [low², high²]."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    if kind == "paper":
        a = (low + (high - low) * u) ** (1.0 / c)  # a^c ~ U[low, high]  (§2.4)
    else:
        a = (low**2 + (high**2 - low**2) * u).sqrt()  # a² ~ U[low², high²]: uniform on a ring's area
    return torch.logit(a).float()  # Λ = σ^{-1}(a)


@model_output
class RecurrentBlockState:
    """Decoding state of one recurrent block: constant size, updated in place by each step."""

    conv: Tensor
    """The Conv1D's last ``d_conv - 1`` inputs ``[B, lru_width, d_conv - 1]``."""
    recurrent: Tensor
    """The RG-LRU's hidden vector ``h`` ``[B, lru_width]`` in fp32."""


class BlockDiagonalLinear(nn.Module):
    """``x [..., H·W] -> [..., H·W]``: an independent ``W x W`` linear map (with bias) on each of ``H`` blocks."""

    def __init__(self, width: int, n_blocks: int) -> None:
        super().__init__()
        self.n_blocks, self.block_width = n_blocks, width // n_blocks
        self.weight = nn.Parameter(torch.empty(n_blocks, self.block_width, self.block_width))  # (H, in, out)
        self.bias = nn.Parameter(torch.empty(n_blocks, self.block_width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LeCun normal within a block (variance 1/block_width), zero bias (the released code)."""
        nn.init.normal_(self.weight, std=math.sqrt(1.0 / self.block_width))
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply each block's map to its slice of the last dimension."""
        blocks = x.reshape(*x.shape[:-1], self.n_blocks, self.block_width)  # (..., H, W)
        y = torch.einsum("...hi,hij->...hj", blocks, self.weight) + self.bias
        return y.flatten(-2)


class RGLRU(nn.Module):
    """The real-gated linear recurrent unit (§2.4, eqs. 1-4): ``x [B, T, D_RNN] -> h [B, T, D_RNN]``."""

    def __init__(self, config: GriffinConfig) -> None:
        super().__init__()
        width = config.rnn_width
        self.c, self.init_kind = config.lru_c, config.lru_init
        self.init_range = (config.lru_min, config.lru_max)
        self.input_gate = BlockDiagonalLinear(width, config.n_heads)  # i_t, eq. 2
        self.recurrence_gate = BlockDiagonalLinear(width, config.n_heads)  # r_t, eq. 1
        self.lambda_ = nn.Parameter(torch.empty(width))  # Λ, a = σ(Λ)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The gates' LeCun init and Λ from :func:`lru_init` (the paper's a^c uniform, or the released ring)."""
        self.input_gate.reset_parameters()
        self.recurrence_gate.reset_parameters()
        with torch.no_grad():
            self.lambda_.copy_(lru_init(tuple(self.lambda_.shape), self.c, *self.init_range, self.init_kind))

    def coefficients(self, x: Tensor, positions: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(a_t, b_t)`` in fp32 with ``h_t = a_t h_{t-1} + b_t`` (eqs. 1-4), with the reset and padding applied.

        ``positions [B, T]`` (0 starts a segment: ``a = 0`` and no ``sqrt(1 - a²)`` factor); ``mask [B, T]`` marks
        valid positions (a padded one gets ``a = 1, b = 0`` and leaves the state unchanged).
        """
        i = torch.sigmoid(self.input_gate(x)).float()  # eq. 2
        r = torch.sigmoid(self.recurrence_gate(x)).float()  # eq. 1
        log_a = -self.c * r * F.softplus(-self.lambda_.float())  # eq. 3 in log space: log a^{c r} = c r log σ(Λ)
        a = torch.exp(log_a)
        reset = (positions == 0)[..., None]  # (B, T, 1)
        norm = torch.where(reset, 1.0, sqrt_bounded_grad(1.0 - torch.exp(2.0 * log_a)))  # sqrt(1 - a_t²)
        b = x.float() * i * norm  # eq. 4's input term
        a = a.masked_fill(reset, 0.0)
        if mask is not None:
            valid = mask[..., None]
            a, b = torch.where(valid, a, 1.0), torch.where(valid, b, 0.0)
        return a, b

    def forward(
        self, x: Tensor, positions: Tensor, mask: Tensor | None = None, initial: Tensor | None = None
    ) -> Tensor:
        """All states ``h [B, T, D_RNN]`` (fp32) from ``h_{-1} = initial`` (zeros when None)."""
        a, b = self.coefficients(x, positions, mask)
        h: Tensor = ops.linear_recurrence(a, b, initial)
        return h


class RecurrentBlock(nn.Module):
    """The recurrent block (Fig. 2c): a GeLU gate branch times Conv1D -> RG-LRU, projected back to ``d_model``."""

    def __init__(self, config: GriffinConfig) -> None:
        super().__init__()
        d, width = config.d_model, config.rnn_width
        self.width = width
        self.final_scale = 2.0 / config.n_layers
        self.linear_y = nn.Linear(d, width)  # gate branch
        self.linear_x = nn.Linear(d, width)  # recurrent branch
        self.act = get_activation(config.activation)
        self.conv = CausalDepthwiseConv1d(width, config.d_conv, bias=True)
        self.rg_lru = RGLRU(config)
        self.linear_out = nn.Linear(width, d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The released code's init: LeCun normal in, ``final_scale``/fan-in out, Conv1D at 0.01/width, zero biases."""
        _lecun(self.linear_y)
        _lecun(self.linear_x)
        _lecun(self.linear_out, self.final_scale)
        nn.init.normal_(self.conv.weight, std=math.sqrt(0.01 / self.conv.kernel_size))
        assert self.conv.bias is not None
        nn.init.zeros_(self.conv.bias)
        self.rg_lru.reset_parameters()

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RecurrentBlockState:
        """Zero Conv1D history (in ``dtype``) and a zero fp32 ``h``; constant size, so ``max_len`` is not needed."""
        device = self.linear_out.weight.device if device is None else device
        conv = self.conv.init_state(batch_size, device=device, dtype=dtype)
        h = torch.zeros(batch_size, self.width, device=device, dtype=torch.float32)
        return RecurrentBlockState(conv=conv, recurrent=h)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: RecurrentBlockState | None = None,
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``positions [B, T]`` default ``0..T-1``; ``state`` updated."""
        B, T, _ = x.shape
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        gate = self.act(self.linear_y(x))
        u = self.linear_x(x)
        if mask is not None:  # pads feed the Conv1D a zero, as before the first token
            u = u * mask[..., None].to(u.dtype)
        if state is None:
            u = self.conv(u)
        else:
            u, history = self.conv.step(u, state.conv)
            state.conv.copy_(history)
        h = self.rg_lru(u, positions, mask, None if state is None else state.recurrent)  # (B, T, D_RNN) fp32
        if state is not None:
            state.recurrent.copy_(h[:, -1])
        out: Tensor = self.linear_out(h.to(x.dtype) * gate)
        return out


class LocalAttention(Attention):
    """Local (sliding-window) causal multi-query attention with partial RoPE; its state is a ring of ``window`` keys."""

    def __init__(self, config: GriffinConfig) -> None:
        c = config
        super().__init__(
            c.d_model,
            c.n_heads,
            n_kv_heads=c.n_kv_heads,
            causal=True,
            window=c.window,
            rope=RotaryEmbedding(c.head_dim, rotary_dim=c.rotary_dim, base=c.rope_base),
            bias=c.attention_bias,
            out_bias=True,
            dropout=c.attention_dropout,
            ring_cache=True,
        )
        self.final_scale = 2.0 / c.n_layers
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The released code's init: q, k, v LeCun normal, the output at ``final_scale``/fan-in, zero biases."""
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            _lecun(proj)
        _lecun(self.o_proj, self.final_scale)


def _lecun(linear: nn.Linear, scale: float = 1.0) -> None:
    """``N(0, scale / fan_in)`` weight and zero bias."""
    nn.init.normal_(linear.weight, std=math.sqrt(scale / linear.in_features))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class Griffin(SequenceBackbone):
    """Griffin / Hawk: residual blocks of a temporal mixer (RG-LRU or local MQA, by ``block_types``) and a gated MLP."""

    config_class: ClassVar[type[ArchConfig]] = GriffinConfig
    config: GriffinConfig

    def __init__(self, config: GriffinConfig) -> None:
        super().__init__(config)
        # RecurrentGemma (and the released code) scale by sqrt(D) cast to bfloat16, "to match training".
        root = torch.tensor(math.sqrt(config.d_model), dtype=torch.bfloat16, device="cpu").item()
        self.embed_scale = root if config.scale_embeddings else 1.0
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index``: ``h + Temporal(RMSNorm(h))`` then ``h + MLP(RMSNorm(h))`` (§2.1)."""
        c = self.config
        mixer: nn.Module = RecurrentBlock(c) if c.block_type(index) == "recurrent" else LocalAttention(c)
        mlp = GatedFeedForward(c.d_model, c.ffn_hidden, activation=c.activation, bias=True)
        return TransformerBlock(c.d_model, mixer, mlp, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """Embed tokens (times ``sqrt(D)`` in bf16 precision with ``scale_embeddings``) or project features."""
        h = super().embed_inputs(inputs)
        return h * self.embed_scale if self.embed_tokens is not None and self.embed_scale != 1.0 else h

    def _output(self, h: Tensor, aux: Tensor | None) -> Tensor | SequenceOutput:
        out = super()._output(h, aux)
        cap = self.config.logits_soft_cap
        if cap is None or self.lm_head is None:
            return out
        assert isinstance(out, Tensor)
        return torch.tanh(out / cap) * cap  # soft-capped logits (RecurrentGemma)

    def reset_parameters(self) -> None:
        """Each block's own init (module doc), the MLPs' LeCun normal, embeddings ``N(0, 1/D)``."""
        super().reset_parameters()
        final = 2.0 / self.config.n_layers
        for layer in self.layers:
            mlp = cast(GatedFeedForward, cast(TransformerBlock, layer).ffn)
            _lecun(mlp.gate_proj)
            _lecun(mlp.up_proj)
            _lecun(mlp.down_proj, final)
        std = math.sqrt(1.0 / self.config.d_model)
        if self.embed_tokens is not None:
            nn.init.normal_(self.embed_tokens.weight, std=std)
        if self.lm_head is not None and not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=std)

    def rg_lrus(self) -> list[RGLRU]:
        """The RG-LRU of every recurrent block, in order."""
        return [m.rg_lru for m in self.modules() if isinstance(m, RecurrentBlock)]


# -- transformers' RecurrentGemma -----------------------------------------------------------------------------------
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_tanh")


def _hf_get(hf: Any, name: str, default: Any = None) -> Any:
    return hf.get(name, default) if isinstance(hf, dict) else getattr(hf, name, default)


def recurrent_gemma_config(hf: Any, **overrides: Any) -> GriffinConfig:
    """The :class:`GriffinConfig` (a :class:`HawkConfig` when no block is attention) of a RecurrentGemma config."""
    act = _hf_get(hf, "hidden_activation", "gelu_pytorch_tanh")
    if act not in _GELU_TANH:
        raise CheckpointError(f"RecurrentGemma converter: hidden_activation={act!r} is not supported (GeLU-tanh only)")
    rope = dict(_hf_get(hf, "rope_parameters") or {})  # transformers >= 5.x; older versions keep top-level fields
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"RecurrentGemma converter: rope_type={rope['rope_type']!r} is not supported")
    theta = rope.get("rope_theta", _hf_get(hf, "rope_theta", 10000.0))
    partial = rope.get("partial_rotary_factor", _hf_get(hf, "partial_rotary_factor", 0.5))
    d, heads = _hf_get(hf, "hidden_size"), _hf_get(hf, "num_attention_heads")
    n_layers = _hf_get(hf, "num_hidden_layers")
    kinds = ["recurrent" if k == "recurrent" else "attention" for k in _hf_get(hf, "block_types")]
    fields: dict[str, Any] = {
        "d_model": d,
        "n_layers": n_layers,
        "n_heads": heads,
        "n_kv_heads": _hf_get(hf, "num_key_value_heads") or heads,
        "lru_width": _hf_get(hf, "lru_width") or d,
        "d_conv": _hf_get(hf, "conv1d_width", 4),
        "d_ff": _hf_get(hf, "intermediate_size") // 2,
        "window": _hf_get(hf, "attention_window_size", 2048),
        "rope_base": float(theta),
        "rotary_fraction": float(partial),
        "attention_bias": bool(_hf_get(hf, "attention_bias", False)),
        "attention_dropout": float(_hf_get(hf, "attention_dropout", 0.0)),
        "norm_eps": float(_hf_get(hf, "rms_norm_eps", 1e-6)),
        "vocab_size": _hf_get(hf, "vocab_size"),
        "tie_embeddings": bool(_hf_get(hf, "tie_word_embeddings", True)),
        "scale_embeddings": True,
        "logits_soft_cap": _hf_get(hf, "logits_soft_cap", 30.0) or None,
        "lru_init": "ring",
    }
    layer_kinds = [kinds[i % len(kinds)] for i in range(n_layers)]
    if "attention" not in layer_kinds:
        return HawkConfig(**{**fields, **overrides})
    return GriffinConfig(**{**fields, "block_types": tuple(kinds), **overrides})


def map_recurrent_gemma_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a ``RecurrentGemmaForCausalLM`` state dict to :class:`Griffin`'s keys (unknown keys raise).

    RMSNorm gains are stored as ``w`` with gain ``1 + w`` there and as the gain here; Λ is minus its
    ``recurrent_param`` (``a = exp(-softplus(p)) = σ(-p)``); Conv1D weights ``[C, 1, K]`` become ``[C, K]``.
    """
    out: dict[str, Tensor] = {}
    leaves = {
        "temporal_pre_norm.weight": "mixer_norm.weight",
        "channel_pre_norm.weight": "ffn_norm.weight",
        "temporal_block.linear_x.weight": "mixer.linear_x.weight",
        "temporal_block.linear_x.bias": "mixer.linear_x.bias",
        "temporal_block.linear_y.weight": "mixer.linear_y.weight",
        "temporal_block.linear_y.bias": "mixer.linear_y.bias",
        "temporal_block.linear_out.weight": "mixer.linear_out.weight",
        "temporal_block.linear_out.bias": "mixer.linear_out.bias",
        "temporal_block.conv_1d.weight": "mixer.conv.weight",
        "temporal_block.conv_1d.bias": "mixer.conv.bias",
        "temporal_block.rg_lru.recurrent_param": "mixer.rg_lru.lambda_",
        "temporal_block.rg_lru.input_gate_weight": "mixer.rg_lru.input_gate.weight",
        "temporal_block.rg_lru.input_gate_bias": "mixer.rg_lru.input_gate.bias",
        "temporal_block.rg_lru.recurrent_gate_weight": "mixer.rg_lru.recurrence_gate.weight",
        "temporal_block.rg_lru.recurrent_gate_bias": "mixer.rg_lru.recurrence_gate.bias",
        **{f"temporal_block.{p}_proj.{w}": f"mixer.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")},
        **{f"mlp_block.{p}_proj.{w}": f"ffn.{p}_proj.{w}" for p in ("gate", "up", "down") for w in ("weight", "bias")},
    }
    for key, value in state_dict.items():
        if key == "model.embed_tokens.weight":
            out["embed_tokens.weight"] = value
        elif key == "model.final_norm.weight":
            out["norm.weight"] = value.float() + 1.0
        elif key == "lm_head.weight":
            out[key] = value
        elif key.startswith("model.layers.") and key.split(".", 3)[3] in leaves:
            index, leaf = key.split(".", 3)[2:]
            name = leaves[leaf]
            if name.endswith("norm.weight"):
                value = value.float() + 1.0
            elif name.endswith("lambda_"):
                value = -value
            elif name == "mixer.conv.weight":
                value = value.squeeze(1)
            out[f"layers.{index}.{name}"] = value
        else:
            raise CheckpointError(f"RecurrentGemma converter: unexpected key {key!r}")
    return out


def from_recurrent_gemma(source: Any, **overrides: Any) -> Griffin:
    """Convert transformers' ``RecurrentGemmaForCausalLM`` (a model or ``(config, state_dict)``) to ``griffin``.

    A model whose blocks are all recurrent comes back as ``hawk``. The result computes RecurrentGemma's logits
    (embedding scale, soft-cap, (1 + w) norm gains, the released code's ring init for later re-initialisation).
    """
    if isinstance(source, tuple) and len(source) == 2:
        hf, state_dict = source
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf, state_dict = source.config, source.state_dict()
    else:
        raise TypeError(f"RecurrentGemma converter: source must be a model or (config, state_dict), got {type(source)}")
    config = recurrent_gemma_config(hf, **overrides)
    weights = map_recurrent_gemma_state_dict(dict(state_dict))
    if config.tie_embeddings:
        weights["lm_head.weight"] = weights["embed_tokens.weight"]
    with torch.device("meta"):
        model = Griffin(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"RecurrentGemma converter: the mapped weights do not fit: {exc}") from None
    model.tie_weights()
    return model
