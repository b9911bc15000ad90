"""Conformer: a convolution-augmented Transformer encoder (macaron blocks) over feature sequences.

Paper: Gulati, Qin, Chiu, Parmar, Zhang, Yu, Han, Wang, Zhang, Wu & Pang (2020), "Conformer: Convolution-augmented
Transformer for Speech Recognition", Interspeech 2020, https://arxiv.org/abs/2005.08100.

Implemented, per block (§2, eq. 1, Fig. 1):

* ``x̃ = x + ½ FFN(x)``; ``x' = x̃ + MHSA(x̃)``; ``x'' = x' + Conv(x')``; ``y = LayerNorm(x'' + ½ FFN(x''))``;
* FFN (§2.3, Fig. 4): ``Linear(d, 4d) -> Swish -> Dropout -> Linear(4d, d)`` after a pre-LayerNorm
  (:func:`edifice.blocks.ffn.get_ffn`);
* MHSA (§2.1, Fig. 3): pre-LayerNorm multi-head self-attention, non-causal, through :func:`edifice.ops.sdpa`;
* convolution module (§2.2, Fig. 2): LayerNorm -> pointwise conv (d -> 2d) -> GLU -> depthwise conv (kernel
  ``conv_kernel_size``, centred) -> BatchNorm -> Swish -> pointwise conv -> dropout;
* a final LayerNorm after the stack (transformers' ``Wav2Vec2ConformerEncoder.layer_norm``).

Deviations: positions. The paper uses Transformer-XL's relative sinusoidal encoding; this entry uses the rotary form
of transformers' (and fairseq's) Wav2Vec2-Conformer, which rotates each head's slice of the *normed input* by
``(cos, sin)`` of its position (rotate-half pairing, :mod:`edifice.blocks.rope`) before the query and key
projections (values read the unrotated input) -- so the score is not exactly a function of ``i - j`` as in
RoFormer; ``position_embeddings='none'`` drops it. The subsampling front end (conv2d ×2, §2) and the decoder are
outside the encoder; the model takes features ``[B, T, d_in]`` (a linear projection to ``d_model`` when ``d_in`` is
set). ``attention_mask`` follows transformers: padded input frames are zeroed and hidden from attention as keys, but
the depthwise convolution reads padded frames, so valid outputs depend on the padding (not variable-length exact;
the paper is silent). Initialisation: normal(0,
``init_std``) linears with zero biases (the paper does not give one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.activations import get_activation
from edifice.blocks.ffn import get_ffn
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding, apply_rotary
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice_attention._hf_convert import load_converted
from edifice_attention._linear_attention import MixerStackBackbone
from edifice_attention.configs.conformer import ConformerConfig

__all__ = ["Conformer", "ConformerAttention", "ConformerBlock", "ConformerConvModule", "from_wav2vec2_conformer"]


class ConformerAttention(nn.Module):
    """Multi-head self-attention with transformers' Wav2Vec2-Conformer rotary positions (non-causal, no state)."""

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        c = config
        self.n_heads = c.n_heads
        self.head_dim = c.d_model // c.n_heads
        self.dropout = c.dropout
        self.rotary = RotaryEmbedding(self.head_dim, base=c.rope_base) if c.position_embeddings == "rotary" else None
        self.q_proj = nn.Linear(c.d_model, c.d_model)
        self.k_proj = nn.Linear(c.d_model, c.d_model)
        self.v_proj = nn.Linear(c.d_model, c.d_model)
        self.o_proj = nn.Linear(c.d_model, c.d_model)

    def reset_parameters(self) -> None:
        """PyTorch's default linear initialisation (the backbone applies its normal scheme on top)."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            proj.reset_parameters()

    def _heads(self, h: Tensor) -> Tensor:
        B, T, _ = h.shape
        return h.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``; ``mask [B, T]`` (True = valid) hides padded keys."""
        B, T, _ = x.shape
        qk_in = x
        if self.rotary is not None:  # rotate the input's head slices, then project (Wav2Vec2-Conformer's form)
            cos, sin = self.rotary(torch.arange(T, device=x.device))
            qk_in = apply_rotary(self._heads(x), cos, sin).transpose(1, 2).reshape(B, T, -1)
        q, k, v = self._heads(self.q_proj(qk_in)), self._heads(self.k_proj(qk_in)), self._heads(self.v_proj(x))
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, T) key padding
        out = ops.sdpa(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        y: Tensor = self.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        return y


class ConformerConvModule(nn.Module):
    """LayerNorm, pointwise conv + GLU, centred depthwise conv, BatchNorm, Swish, pointwise conv, dropout (Fig. 2)."""

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        c = config
        d, ks = c.d_model, c.conv_kernel_size
        self.norm = get_norm(c.norm, d, eps=c.norm_eps)
        self.pointwise_in = nn.Conv1d(d, 2 * d, 1, bias=False)
        self.depthwise = nn.Conv1d(d, d, ks, padding=(ks - 1) // 2, groups=d, bias=False)
        self.batch_norm = nn.BatchNorm1d(d, eps=c.batch_norm_eps, momentum=c.batch_norm_momentum)
        self.act = get_activation(c.activation)
        self.pointwise_out = nn.Conv1d(d, d, 1, bias=False)
        self.dropout = nn.Dropout(c.dropout)

    def reset_parameters(self) -> None:
        """PyTorch's defaults (BatchNorm: unit scale, zero shift, fresh running statistics)."""
        for module in (self.norm, self.pointwise_in, self.depthwise, self.batch_norm, self.pointwise_out):
            module.reset_parameters()  # type: ignore[operator]

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, d] -> [B, T, d]`` (convolutions run channel-first)."""
        h = self.pointwise_in(self.norm(x).transpose(1, 2))  # (B, 2d, T)
        h = nn.functional.glu(h, dim=1)
        h = self.pointwise_out(self.act(self.batch_norm(self.depthwise(h))))
        y: Tensor = self.dropout(h).transpose(1, 2)
        return y


class ConformerBlock(nn.Module):
    """``x + ½FFN``, ``+ MHSA``, ``+ Conv``, ``+ ½FFN``, LayerNorm (eq. 1); the layer protocol, no state."""

    def __init__(self, config: ConformerConfig, ffn: nn.Module, ffn_2: nn.Module, *, first: bool = False) -> None:
        super().__init__()
        c = config
        self.first = first
        self.ffn1_norm = get_norm(c.norm, c.d_model, eps=c.norm_eps)
        self.ffn1 = ffn
        self.attn_norm = get_norm(c.norm, c.d_model, eps=c.norm_eps)
        self.attn = ConformerAttention(c)
        self.conv = ConformerConvModule(c)
        self.ffn2_norm = get_norm(c.norm, c.d_model, eps=c.norm_eps)
        self.ffn2 = ffn_2
        self.final_norm = get_norm(c.norm, c.d_model, eps=c.norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``; ``mask [B, T]`` as transformers: the first block zeroes padded
        frames, attention ignores padded keys, and the depthwise convolution still reads padded frames."""
        if mask is not None and self.first:
            x = x * mask[..., None].to(x.dtype)
        x = x + 0.5 * self.dropout(self.ffn1(self.ffn1_norm(x)))
        x = x + self.dropout(self.attn(self.attn_norm(x), mask))
        x = x + self.conv(x)
        x = x + 0.5 * self.dropout(self.ffn2(self.ffn2_norm(x)))
        y: Tensor = self.final_norm(x)
        return y


class Conformer(MixerStackBackbone):
    """Conformer encoder: input projection, ``n_layers`` macaron blocks and a final LayerNorm."""

    config_class: ClassVar[type[ArchConfig]] = ConformerConfig
    config: ConformerConfig

    def build_layer(self, index: int) -> nn.Module:
        """One Conformer block with its two half-step FFNs."""
        return ConformerBlock(self.config, self.build_ffn(), self.build_ffn(), first=index == 0)

    def build_ffn(self) -> nn.Module:
        """The Swish MLP (or a gated kind) with the configured activation and dropout."""
        c = self.config
        options: dict[str, Any] = {"activation": c.activation, "dropout": c.dropout} if c.ffn == "mlp" else {}
        return get_ffn(c.ffn, c.d_model, c.ffn_hidden, **options)


# -- transformers checkpoints ---------------------------------------------------------------------------------------
_LAYER_MODULES = {
    "ffn1_layer_norm": "ffn1_norm",
    "ffn1.intermediate_dense": "ffn1.up_proj",
    "ffn1.output_dense": "ffn1.down_proj",
    "self_attn_layer_norm": "attn_norm",
    "self_attn.linear_q": "attn.q_proj",
    "self_attn.linear_k": "attn.k_proj",
    "self_attn.linear_v": "attn.v_proj",
    "self_attn.linear_out": "attn.o_proj",
    "conv_module.layer_norm": "conv.norm",
    "conv_module.pointwise_conv1": "conv.pointwise_in",
    "conv_module.depthwise_conv": "conv.depthwise",
    "conv_module.batch_norm": "conv.batch_norm",
    "conv_module.pointwise_conv2": "conv.pointwise_out",
    "ffn2_layer_norm": "ffn2_norm",
    "ffn2.intermediate_dense": "ffn2.up_proj",
    "ffn2.output_dense": "ffn2.down_proj",
    "final_layer_norm": "final_norm",
}
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)\.(\w+)$")
# Parts of Wav2Vec2ConformerModel outside the encoder stack (the CNN front end, its projection, the unused
# positional convolution, masking and pre-training heads).
_OUTSIDE = re.compile(r"^(pos_conv_embed\.|embed_positions\.)")


def wav2vec2_conformer_config(hf: Any, **overrides: Any) -> ConformerConfig:
    """The :class:`ConformerConfig` of a transformers ``Wav2Vec2ConformerConfig`` (features in, hidden states out)."""
    kind = hf.position_embeddings_type
    if kind not in ("rotary", None):
        raise CheckpointError(
            f"Conformer converter: position_embeddings_type={kind!r} is not supported (expected 'rotary' or None)"
        )
    if hf.layer_norm_eps != 1e-5:
        raise CheckpointError(
            f"Conformer converter: layer_norm_eps={hf.layer_norm_eps} differs from the layers' fixed 1e-5 in "
            "transformers; edifice uses one epsilon everywhere"
        )
    options: dict[str, Any] = {
        "d_model": hf.hidden_size,
        "n_layers": hf.num_hidden_layers,
        "n_heads": hf.num_attention_heads,
        "d_ff": hf.intermediate_size,
        "conv_kernel_size": hf.conv_depthwise_kernel_size,
        "activation": hf.hidden_act,
        "norm_eps": hf.layer_norm_eps,
        "position_embeddings": "rotary" if kind == "rotary" else "none",
        "rope_base": float(getattr(hf, "rotary_embedding_base", 10000.0)),
    }
    options.update(overrides)
    return ConformerConfig(**options)


def rename_wav2vec2_conformer(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Wav2Vec2-Conformer encoder's weights (``[wav2vec2_conformer.]encoder.…``) onto :class:`Conformer`."""
    keys = [k for k in state_dict if ".encoder." in f".{k}"]
    if not keys:
        raise CheckpointError("Conformer converter: no 'encoder.' weights in the state dict")
    prefix = keys[0][: keys[0].index("encoder.") + len("encoder.")]
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue  # the feature encoder, feature projection, quantizer and heads are outside the encoder stack
        name = key.removeprefix(prefix)
        if _OUTSIDE.match(name):
            continue
        if name.startswith("layer_norm."):
            out[f"norm.{name.removeprefix('layer_norm.')}"] = value.detach().clone()
            continue
        match = _LAYER.match(name)
        if match is None or match.group(2) not in _LAYER_MODULES:
            unknown.append(key)
            continue
        index, module, leaf = match.groups()
        out[f"layers.{index}.{_LAYER_MODULES[module]}.{leaf}"] = value.detach().clone()
    if unknown:
        raise CheckpointError(f"Conformer converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    return out


def from_wav2vec2_conformer(source: Any, **overrides: Any) -> Conformer:
    """Convert the encoder of transformers' ``Wav2Vec2ConformerModel`` (a model, a task model or its encoder, or a
    ``(config, state_dict)`` pair).

    The result maps the encoder's input features ``[B, T, hidden_size]`` (the output of the model's feature
    projection) to ``encoder(...).last_hidden_state``; the CNN feature encoder is not converted. Needs
    ``position_embeddings_type`` 'rotary' or None (transformers' 'relative' is not supported).
    """
    if isinstance(source, tuple) and len(source) == 2:
        hf, state_dict = source
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf, state_dict = source.config, source.state_dict()
        if not any(".encoder." in f".{k}" for k in state_dict):
            state_dict = {f"encoder.{k}": v for k, v in state_dict.items()}  # the encoder module itself
    else:
        raise TypeError(f"Conformer converter: source must be a model or (config, state_dict), got {type(source)}")
    config = wav2vec2_conformer_config(hf, **overrides)
    return load_converted(Conformer, config, rename_wav2vec2_conformer(state_dict), who="Conformer")
