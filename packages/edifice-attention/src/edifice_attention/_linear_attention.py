"""The linear-attention token mixer and backbone that ``retnet``, ``gla`` and the family's later entries share.

Every entry of the family is the same layer around a different decay (each entry's module gives its equations)::

    q = φ(Conv(x W_q)), k = φ(Conv(x W_k)), v = Conv(x W_v)        short convolutions optional, φ the feature map
    q, k <- rotate(q, k, positions)                                  an entry's position encoding (RetNet's Θ)
    q, k, v, g = gates(x, q, k, v)                                  g = log_decay(x): [B, T, H] or [B, T, H, K], <= 0
    S_t = diag(e^{g_t}) S_{t-1} + k_t v_tᵀ,   o_t = S_tᵀ q_t · scale      edifice.ops.(gated_)linear_attention
    y = (Norm(o) ⊙ act(x W_g)) W_o                                   per-head (or joint) norm, output gate (optional)

:class:`LinearAttentionMixer` holds the projections, the short convolutions, the output gate and norm, and calls the
op in its chunked form for a whole sequence and from the carried state for ``step`` (one position: the recurrent
form). An entry subclasses it and implements :meth:`~LinearAttentionMixer.log_decay` (and, if it has one,
:meth:`~LinearAttentionMixer.rotate`); entries whose keys or values depend on the gate (HGRN-2's ``k = 1 - f``)
override :meth:`~LinearAttentionMixer.gates`, and entries that read the state otherwise (the linear transformer's
normaliser) override :meth:`~LinearAttentionMixer.attend`. :class:`LinearAttentionBackbone` stacks pre-norm blocks of
that mixer and a feed-forward (:class:`~edifice.blocks.transformer.TransformerBlock` on
:class:`~edifice.blocks.backbone.SequenceBackbone`); :meth:`~LinearAttentionBackbone.build_mixer` gets the layer
index (lightning attention's decay depends on depth).

Padding: positions where ``mask`` is False are fed as zero input with ``k = 0`` and ``g = 0``, an exact identity update
of the state, and the short convolutions see zeros there, as before the first token; a left- or right-padded
sequence gives exactly the unpadded result at its valid positions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.activations import get_activation
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.ffn import get_ffn
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice.outputs import model_output
from edifice_attention.configs._linear_attention import LinearAttentionConfig, MixerStackConfig

__all__ = [
    "LinearAttentionBackbone",
    "LinearAttentionMixer",
    "LinearAttentionState",
    "MixerStackBackbone",
    "fla_config_fields",
    "fla_get",
    "fla_source",
    "load_fla",
    "map_fla_state_dict",
]


@model_output
class LinearAttentionState:
    """Decoding state of one linear-attention mixer: constant size, updated in place by each step."""

    conv: list[Tensor]
    """The q, k and v short-convolution histories ``[B, C, conv_size - 1]`` (empty without short convolutions)."""
    recurrent: Tensor
    """The matrix state ``S`` ``[B, n_heads, head_k_dim, head_v_dim]`` in fp32."""


class LinearAttentionMixer(nn.Module):
    """The linear-attention token mixer ``[B, T, d_model] -> [B, T, d_model]`` of the module doc, with ``init_state``.

    Subclasses implement :meth:`log_decay` and set :attr:`vector_decay`; :meth:`rotate` is the identity here.
    """

    #: Whether :meth:`log_decay` returns one decay per key channel ``[B, T, H, K]`` (else per head ``[B, T, H]``).
    vector_decay: ClassVar[bool] = False
    #: Query scale of the read-out (None: ``1/sqrt(head_k_dim)``).
    scale: float | None = None

    def __init__(self, config: LinearAttentionConfig) -> None:
        super().__init__()
        c = config
        self.n_heads, self.head_k_dim, self.head_v_dim = c.n_heads, c.head_k_dim, c.head_v_dim
        self.chunk_size = c.chunk_size
        self.state_v_dim = c.head_v_dim  # columns of the matrix state (an entry may carry more, e.g. a normaliser)
        self.state_k_dim = c.head_k_dim  # rows of the matrix state (a feature map may change the key width)
        key_dim, value_dim = c.n_heads * c.head_k_dim, c.n_heads * c.head_v_dim
        self.q_proj = nn.Linear(c.d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(c.d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(c.d_model, value_dim, bias=False)
        self.convs = (
            nn.ModuleList(
                CausalDepthwiseConv1d(n, c.conv_size, bias=c.conv_bias) for n in (key_dim, key_dim, value_dim)
            )
            if c.use_short_conv
            else None
        )
        self.feature_map = self.build_feature_map(c.feature_map)
        self.g_proj = nn.Linear(c.d_model, value_dim, bias=False) if c.use_output_gate else None
        self.gate_act = get_activation(c.output_gate_act)
        self.norm_per_head = c.output_norm_per_head
        # One norm per head (GroupNorm-like, one gain shared by the heads) or one over all heads' channels.
        self.o_norm = get_norm(c.output_norm, c.head_v_dim if c.output_norm_per_head else value_dim, eps=c.norm_eps)
        self.o_proj = nn.Linear(value_dim, c.d_model, bias=False)

    # -- hooks for entries ------------------------------------------------------------------------------------------
    def build_feature_map(self, name: str | None) -> nn.Module | None:
        """The feature map φ applied to q and k, by activation name (None: none)."""
        return get_activation(name) if name is not None else None

    def log_decay(self, x: Tensor) -> Tensor | None:
        """The log-decay ``g <= 0`` of each position, fp32 ``[B, T, H]`` (or ``[B, T, H, K]``); None: no decay."""
        return None

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Position-dependent transform of ``q, k [B, T, H, K]`` at integer ``positions [B, T]`` (default: none)."""
        return q, k

    def gates(
        self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, **inputs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(q, k, v, g)`` given to the op, from the input and the heads ``[B, T, H, *]``: ``g = log_decay(x)``.

        ``g`` may be None (no decay); ``inputs`` are the mixer's extra keywords (e.g. HGRN's per-layer lower bound).
        """
        return q, k, v, self.log_decay(x)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, initial: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The op on ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, ``g``: ``(o [B, T, H, V], final state)``."""
        kwargs: dict[str, Any] = {"scale": self.scale, "initial_state": initial, "chunk_size": self.chunk_size}
        if self.vector_decay:
            assert g is not None, f"{type(self).__name__}: a vector decay needs log_decay"
            return ops.gated_linear_attention(q, k, v, g, **kwargs)
        return ops.linear_attention(q, k, v, g, **kwargs)

    # -- decoding state ---------------------------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LinearAttentionState:
        """Zero conv histories (in ``dtype``) and a zero fp32 state; constant size, so ``max_len`` is not needed."""
        device = self.o_proj.weight.device if device is None else device
        conv = [c.init_state(batch_size, device=device, dtype=dtype) for c in self._convs()]
        S = torch.zeros(
            batch_size, self.n_heads, self.state_k_dim, self.state_v_dim, device=device, dtype=torch.float32
        )
        return LinearAttentionState(conv=conv, recurrent=S)

    # -- forward ----------------------------------------------------------------------------------------------------
    def _features(self, x: Tensor, state: LinearAttentionState | None) -> list[Tensor]:
        """q, k ``[B, T, H·K]`` and v ``[B, T, H·V]`` after the short convolutions (and their SiLU)."""
        feats = [self.q_proj(x), self.k_proj(x), self.v_proj(x)]
        convs = self._convs()
        if not convs:
            return feats
        for i, (conv, f) in enumerate(zip(convs, feats, strict=True)):
            if state is None:
                feats[i] = F.silu(conv(f))
            else:
                y, history = conv.step(f, state.conv[i])
                state.conv[i].copy_(history)
                feats[i] = F.silu(y)
        return feats

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: LinearAttentionState | None = None,
        **inputs: Tensor,
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask [B, T]`` marks valid positions; ``state`` is updated.

        ``inputs`` are an entry's own per-layer tensors (given by its backbone's ``layer_inputs``), passed to ``gates``.
        """
        B, T, _ = x.shape
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        valid = None if mask is None else mask.to(x.dtype)[..., None]  # (B, T, 1)
        if valid is not None:
            x = x * valid  # pads become zero input: the short convolutions see what they see before the first token
        q, k, v = self._features(x, state)
        q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        q, k = self.rotate(q, k, positions)
        q, k, v, g = self.gates(x, q, k, v, **inputs)
        if valid is not None:
            k = k * valid[..., None]  # a padded position writes nothing ...
            g = None if g is None else g * valid.float().view(B, T, *([1] * (g.dim() - 2)))  # ... and decays nothing
        o, final = self.attend(q, k, v, g, None if state is None else state.recurrent)
        if state is not None:
            state.recurrent.copy_(final)
        out: Tensor = self.o_proj(self._output(o, x).flatten(2))
        return out

    def _convs(self) -> list[CausalDepthwiseConv1d]:
        """The q, k and v short convolutions (empty without them)."""
        return [] if self.convs is None else [cast(CausalDepthwiseConv1d, c) for c in self.convs]

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """Norm of the read-out ``o [B, T, H, V]`` (per head or joint), times ``act(x W_g)`` if the output is gated."""
        y: Tensor = self.o_norm(o) if self.norm_per_head else self.o_norm(o.flatten(2)).view_as(o)
        if self.g_proj is not None:
            gate = self.g_proj(x).view(*o.shape)
            y = (y.float() * self.gate_act(gate.float())).to(o.dtype)
        return y


class MixerStackBackbone(SequenceBackbone):
    """Pre-norm residual blocks of a token mixer (:meth:`build_mixer`) and a feed-forward; the family's stack."""

    config_class: ClassVar[type[ArchConfig]] = MixerStackConfig
    config: MixerStackConfig

    def __init__(self, config: MixerStackConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_mixer(self, index: int) -> nn.Module:
        """The token mixer of layer ``index``: ``mixer(x, *, mask, positions, state, **inputs)`` with ``init_state``."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_mixer(index)")

    def build_layer(self, index: int) -> nn.Module:
        """One pre-norm residual block: Norm -> mixer, Norm -> feed-forward (if ``d_ff != 0``)."""
        c = self.config
        ffn = self.build_ffn() if c.ffn_hidden else None
        return TransformerBlock(
            c.d_model, self.build_mixer(index), ffn, norm=c.norm, norm_eps=c.norm_eps, dropout=c.dropout
        )

    def build_ffn(self) -> nn.Module:
        """The block's feed-forward (``ffn`` kind, ``ffn_hidden`` units); gated kinds carry no biases (Llama)."""
        c = self.config
        options: dict[str, Any] = {} if c.ffn == "mlp" else {"bias": False}
        return get_ffn(c.ffn, c.d_model, c.ffn_hidden, **options)

    def build_norm(self) -> nn.Module:
        """The final norm, of the blocks' kind."""
        return get_norm(self.config.norm, self.config.d_model, eps=self.config.norm_eps)

    def reset_parameters(self) -> None:
        """Normal(0, ``init_std``) linear and embedding weights and zero biases (flash-linear-attention's init)."""
        super().reset_parameters()
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)


class LinearAttentionBackbone(MixerStackBackbone):
    """Pre-norm blocks of a :class:`LinearAttentionMixer` (the entry's :attr:`mixer_class`) and a feed-forward."""

    config_class: ClassVar[type[ArchConfig]] = LinearAttentionConfig
    config: LinearAttentionConfig
    #: The entry's mixer.
    mixer_class: ClassVar[type[LinearAttentionMixer]] = LinearAttentionMixer

    def build_mixer(self, index: int) -> LinearAttentionMixer:
        """The token mixer of layer ``index`` (the entry's :attr:`mixer_class`; the index is for depth-aware ones)."""
        return self.mixer_class(self.config)

    def mixers(self) -> list[LinearAttentionMixer]:
        """The mixer of every layer, in order."""
        return [cast(LinearAttentionMixer, cast(TransformerBlock, layer).mixer) for layer in self.layers]


# -- flash-linear-attention checkpoints -----------------------------------------------------------------------------
_FLA_ROOT = {"model.embeddings.weight": "embed_tokens.weight", "model.norm.weight": "norm.weight"}
_FLA_LAYER = re.compile(r"^model\.layers\.(\d+)\.(attn_norm|attn|mlp_norm|mlp)\.(.+)$")
_FLA_PARTS = {"attn_norm": "mixer_norm", "attn": "mixer", "mlp_norm": "ffn_norm", "mlp": "ffn"}
# fla's mixer parameter names that differ from this package's (the gated per-head norm, the short convolutions).
_FLA_MIXER = {
    "g_norm_swish_gate.weight": "o_norm.weight",
    "g_norm.weight": "o_norm.weight",
    "q_conv1d.weight": "convs.0.weight",
    "k_conv1d.weight": "convs.1.weight",
    "v_conv1d.weight": "convs.2.weight",
    "q_conv1d.bias": "convs.0.bias",
    "k_conv1d.bias": "convs.1.bias",
    "v_conv1d.bias": "convs.2.bias",
}


def fla_get(config: Any, name: str, default: Any = None) -> Any:
    """Field ``name`` of an fla config object or ``config.json`` dict (``default`` when absent)."""
    return config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)


def fla_config_fields(hf: Any, label: str) -> dict[str, Any]:
    """The :class:`LinearAttentionConfig` fields of a flash-linear-attention model config (object or dict).

    fla's models are pre-norm RMSNorm blocks with a SwiGLU MLP and an RMSNorm-and-swish-gated read-out; anything this
    family cannot express (grouped key/value heads, other activations, hybrid attention layers) raises.
    """
    unsupported: dict[str, Callable[[Any], bool]] = {
        "num_kv_heads": lambda v: v is not None and v != fla_get(hf, "num_heads"),
        "hidden_act": lambda v: v not in ("swish", "silu"),
        "elementwise_affine": lambda v: v is False,
        "attn": lambda v: v is not None,
        "attnres_block_size": lambda v: v is not None,
        "use_l2warp": lambda v: bool(v),
    }
    for name, bad in unsupported.items():
        value = fla_get(hf, name)
        if bad(value):
            raise CheckpointError(f"{label} converter: {name}={value!r} is not supported by this model")
    d_model = fla_get(hf, "hidden_size")
    d_ff = fla_get(hf, "intermediate_size")
    if d_ff is None:  # fla's GatedMLP: 2/3 of hidden_ratio·d, rounded up to a multiple of 256
        d_ff = int(d_model * (fla_get(hf, "hidden_ratio") or 4) * 2 / 3)
        d_ff = 256 * ((d_ff + 255) // 256)
    return {
        "d_model": d_model,
        "n_layers": fla_get(hf, "num_hidden_layers"),
        "n_heads": fla_get(hf, "num_heads"),
        "expand_k": float(fla_get(hf, "expand_k")),
        "expand_v": float(fla_get(hf, "expand_v")),
        "vocab_size": fla_get(hf, "vocab_size"),
        "use_short_conv": bool(fla_get(hf, "use_short_conv", False)),
        "conv_size": fla_get(hf, "conv_size", 4),
        "feature_map": fla_get(hf, "feature_map"),
        "use_output_gate": bool(fla_get(hf, "use_output_gate", True)),
        "output_norm": "rmsnorm",
        "norm": "rmsnorm",
        "ffn": "swiglu",
        "d_ff": d_ff,
        "norm_eps": float(fla_get(hf, "norm_eps", 1e-6)),
        "tie_embeddings": bool(fla_get(hf, "tie_word_embeddings", False)),
    }


def map_fla_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a flash-linear-attention ``*ForCausalLM`` state dict to this family's keys (module doc of the entries).

    Short-convolution weights ``[C, 1, K]`` (``nn.Conv1d``) become ``[C, K]``; unknown keys raise.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key in _FLA_ROOT:
            out[_FLA_ROOT[key]] = value
            continue
        if key == "lm_head.weight":
            out[key] = value
            continue
        match = _FLA_LAYER.match(key)
        if match is None:
            raise CheckpointError(f"flash-linear-attention converter: unexpected key {key!r}")
        index, part, leaf = match.groups()
        if part == "attn":
            leaf = _FLA_MIXER.get(leaf, leaf)
            if leaf.startswith("convs.") and leaf.endswith(".weight") and value.dim() == 3:
                value = value.squeeze(1)
        out[f"layers.{index}.{_FLA_PARTS[part]}.{leaf}"] = value
    return out


def load_fla(model_cls: type[MixerStackBackbone], config: MixerStackConfig, weights: dict[str, Tensor]) -> Any:
    """Build ``model_cls(config)`` on the meta device and assign ``weights`` (tied head re-tied)."""
    if config.tie_embeddings:
        weights.pop("lm_head.weight", None)
        weights["lm_head.weight"] = weights["embed_tokens.weight"]
    with torch.device("meta"):
        model = model_cls(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{config.arch} converter: the mapped weights do not fit: {exc}") from None
    model.tie_weights()
    return model


def fla_source(source: Any, label: str) -> tuple[Any, Mapping[str, Tensor]]:
    """``(config, state_dict)`` of a converter's ``source``: an fla model or a ``(config, state_dict)`` pair."""
    if isinstance(source, tuple) and len(source) == 2:
        return source[0], source[1]
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        return source.config, source.state_dict()
    raise TypeError(f"{label} converter: source must be an fla model or (config, state_dict), got {type(source)!r}")
