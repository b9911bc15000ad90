"""Nemotron-H: a hybrid stack of Mamba-2, attention and MLP layers, and a converter from transformers' checkpoints.

NVIDIA (2025), "Nemotron-H: A Family of Accurate and Efficient Hybrid Mamba-Transformer Models",
https://arxiv.org/abs/2504.03624, §2.1 and Figure 1: most self-attention layers of a Transformer are replaced by
Mamba-2 layers (about 8% of the layers stay attention, spread evenly; in the released models the first layer is
Mamba-2, the last an FFN and every attention layer is followed by an FFN), and every layer -- Mamba-2, attention or
FFN -- is its own pre-normalised residual block::

    h = h + Mixer_l(RMSNorm_l(h))          Mixer_l by the l-th character of the layer pattern:
        'M'  Mamba-2 (Dao & Gu 2024, §7): in_proj -> causal conv on (x, B, C) -> SSD -> gated RMSNorm -> out_proj
        '*'  causal grouped-query self-attention, no positional encoding (the Mamba-2 layers carry position)
        '-'  MLP  down_proj(ReLU(up_proj h)^2)   (squared ReLU, no gate, §2.1)
    y = RMSNorm_f(h)  ->  LM head

The Mamba-2 mixer is the ``mamba2`` block of edifice-ssm, fetched by name (:func:`edifice.blocks.get`; the spec
declares ``requires_blocks=("mamba2",)``), so this distribution imports nothing of edifice-ssm; without it, building
raises :class:`~edifice.MissingDependency` with ``pip install "edifice[ssm]"``. Its SSD runs through
:func:`edifice.ops.ssd`, the attention through :func:`edifice.ops.sdpa`.

Where the paper is silent the released code (transformers' ``NemotronH*`` and NVIDIA's ``modeling_nemotron_h.py``)
decides: attention has no biases and scale ``head_dim^-1/2``; the Mamba-2 gated RMSNorm normalises each of the
``n_groups`` groups separately (``group_size = d_inner / n_groups``); all norms share ``layer_norm_epsilon``.

Decoding: each Mamba-2 layer keeps its convolution history and SSM state (constant size), each attention layer a KV
cache (static with ``max_len``), MLP layers nothing; :meth:`NemotronH.step` reproduces ``forward`` at every position.

Initialisation (the released code): linear and embedding weights ``N(0, init_std^2)``, zero biases, unit norm gains;
the Mamba-2 ``out_proj`` keeps PyTorch's default scaled by ``1/sqrt(n_layers)`` (``rescale_prenorm_residual``); the
Mamba-2 ``A``, ``dt`` and ``D`` keep the block's own initialisation (Mamba-2's ``A = -U(1, 16)`` where transformers
uses ``A_h = -h``).

Deviations: transformers (5.x) clamps Mamba-2's step size from below at ``time_step_min`` in its chunked (prefill)
path only, not in its single-token path; NVIDIA's code and ``mamba_ssm`` clamp at ``time_step_limit = (0, inf)``, i.e.
not at all, and so does this model. Mixture-of-experts layers (``'E'``, Nemotron-3) are not part of Nemotron-H and
are not implemented. ``attention_every_n``, ``window`` and ``rope`` are options of the original Edifice entry; the
paper's models have explicit patterns, full attention and no RoPE (the defaults here with ``pattern`` given).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

import edifice
from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import FeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.rope import RotaryEmbedding
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.errors import CheckpointError, ConfigError
from edifice_attention._hf_convert import load_converted, rename_state_dict
from edifice_attention.configs.nemotron_h import NemotronHConfig
from edifice_attention.convert import _get, _unpack

__all__ = ["NemotronH", "NemotronHMLP", "from_nemotron_h", "map_nemotron_h_state_dict", "nemotron_h_config"]


class NemotronHMLP(FeedForward):
    """The ``'-'`` layer's mixer: ``down_proj(act(up_proj(x)))`` (squared ReLU), under the sequence-mixer protocol.

    Position-wise, so ``mask``, ``positions`` and ``state`` are accepted and ignored; its decoding state is ``None``.
    """

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: Any = None
    ) -> Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``."""
        return super().forward(x)

    def init_state(self, batch_size: int, **kwargs: Any) -> None:
        """No state: a position-wise layer needs nothing from earlier positions."""


class NemotronH(SequenceBackbone):
    """Nemotron-H: ``n_layers`` pre-RMSNorm residual blocks, each a Mamba-2, attention or MLP layer (see module doc).

    Each layer is a :class:`~edifice.blocks.transformer.TransformerBlock` with ``mixer_norm`` and ``mixer`` (no FFN),
    so parameter names follow transformers' ``NemotronHBlock`` (``norm`` -> ``mixer_norm``, ``mixer.*`` alike).
    """

    config_class: ClassVar[type[ArchConfig]] = NemotronHConfig
    config: NemotronHConfig

    def __init__(self, config: NemotronHConfig) -> None:
        # Fetched by name before the layers are built: MissingDependency with the install line without edifice-ssm.
        self._mamba2 = edifice.blocks.get("mamba2") if "M" in config.layer_pattern else None
        super().__init__(config)
        self.reset_parameters()

    @property
    def layer_pattern(self) -> str:
        """The kind of every layer: ``'M'`` Mamba-2, ``'*'`` attention, ``'-'`` MLP."""
        return self.config.layer_pattern

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index``: one pre-RMSNorm residual block around the mixer its pattern character names."""
        c = self.config
        kind = c.layer_pattern[index]
        mixer: nn.Module
        if kind == "M":
            assert self._mamba2 is not None
            mixer = self._mamba2(
                c.d_model,
                d_state=c.d_state,
                d_conv=c.d_conv,
                expand=c.expand,
                head_dim=c.mamba_head_dim,
                n_groups=c.n_groups,
                chunk_size=c.chunk_size,
                conv_bias=c.conv_bias,
                bias=c.mamba_bias,
                norm_eps=c.norm_eps,
                dt_min=c.dt_min,
                dt_max=c.dt_max,
                dt_init_floor=c.dt_init_floor,
            )
        elif kind == "*":
            rope = RotaryEmbedding(c.head_size, base=c.rope_base) if c.rope else None
            mixer = Attention(
                c.d_model,
                c.n_heads,
                n_kv_heads=c.kv_heads,
                head_dim=c.head_size,
                causal=True,
                window=c.window,
                rope=rope,
                bias=False,
                dropout=c.attention_dropout,
            )
        else:
            mixer = NemotronHMLP(c.d_model, c.ffn_hidden, activation=c.activation, bias=c.mlp_bias)
        return TransformerBlock(c.d_model, mixer, None, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm (``norm_f`` in the released code)."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    def reset_parameters(self) -> None:
        """Each block's own initialisation, then the released code's: N(0, init_std^2) linear and embedding weights,
        zero biases, and the Mamba-2 ``out_proj`` at PyTorch's default divided by sqrt(n_layers)."""
        super().reset_parameters()
        std = self.config.init_std
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    nn.init.normal_(module.weight, std=std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            for kind, layer in zip(self.layer_pattern, self.layers, strict=True):
                if kind == "M":
                    out_proj = cast(nn.Linear, layer.get_submodule("mixer.out_proj"))
                    nn.init.kaiming_uniform_(out_proj.weight, a=math.sqrt(5))
                    out_proj.weight.div_(math.sqrt(self.config.n_layers))


# -- converter from transformers' NemotronH -----------------------------------------------------------------------
#: transformers' layer type names (current and legacy) -> pattern characters; 'E' (MoE) is refused.
_LAYER_TYPES = {
    "mamba": "M",
    "linear_attention": "M",
    "attention": "*",
    "full_attention": "*",
    "mlp": "-",
    "moe": "E",
}
#: transformers' per-layer modules -> ours: the block norm is renamed, the mixers' names are the same on both sides.
_MIXER_MODULES = (
    "in_proj",
    "conv1d",
    "norm",
    "out_proj",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "up_proj",
    "down_proj",
)
_LAYER_KEYS = {"norm": "mixer_norm", "mixer": "mixer", **{f"mixer.{m}": f"mixer.{m}" for m in _MIXER_MODULES}}
_TOP = (
    (re.compile(r"(^|\.)embeddings\.weight$"), r"\1embed_tokens.weight"),
    (re.compile(r"(^|\.)norm_f\.weight$"), r"\1norm.weight"),
)
_MTP = re.compile(r"(^|\.)mtp\.")


def _pattern_of(hf: Any) -> str:
    """The layer pattern of a transformers config: ``layers_block_type`` (5.x) or ``hybrid_override_pattern``."""
    types = _get(hf, "layers_block_type") or _get(hf, "layer_types")
    if types:
        unknown = sorted({t for t in types if t not in _LAYER_TYPES})
        if unknown:
            raise ConfigError(f"Nemotron-H converter: unknown layer types {unknown}; known: {sorted(_LAYER_TYPES)}")
        pattern = "".join(_LAYER_TYPES[t] for t in types)
    else:
        pattern = _get(hf, "hybrid_override_pattern")
        if not pattern:
            raise ConfigError(
                "Nemotron-H converter: the config has neither layers_block_type nor hybrid_override_pattern"
            )
    if "E" in pattern:
        raise CheckpointError(
            f"Nemotron-H converter: layers {[i for i, k in enumerate(pattern) if k == 'E']} are mixture-of-experts "
            "('E') layers (Nemotron-3), which nemotron_h does not implement; patterns of 'M', '*' and '-' convert"
        )
    return str(pattern)


def _first(hf: Any, names: tuple[str, ...], default: Any = None) -> Any:
    """The first of ``names`` the config sets (current name first, then NVIDIA's original ``mamba_*`` one)."""
    return next((value for value in (_get(hf, name) for name in names) if value is not None), default)


def nemotron_h_config(hf: Any, *, tie_embeddings: bool | None = None, **overrides: Any) -> NemotronHConfig:
    """The :class:`NemotronHConfig` of a transformers ``NemotronHConfig`` (object or ``config.json`` dict).

    Dicts may use the current names or those of NVIDIA's original configs (``hybrid_override_pattern``,
    ``mamba_n_groups``, ``mamba_d_conv``, ``attention_head_dim``, ...), as transformers accepts both.
    """
    if _get(hf, "mamba_hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"Nemotron-H converter: mamba_hidden_act={_get(hf, 'mamba_hidden_act')!r} is not SiLU")
    limit = _first(hf, ("time_step_limit", "mamba_dt_limit"), (0.0, math.inf))
    low, high = (float(v) for v in limit)
    if low > 0.0 or high != math.inf:
        raise ConfigError(f"Nemotron-H converter: time_step_limit=({low}, {high}) is not supported (no dt clamp here)")
    pattern = _pattern_of(hf)
    d_model, expand = _get(hf, "hidden_size"), _first(hf, ("expand", "mamba_expand"), 2)
    heads, head_dim = _get(hf, "mamba_num_heads"), _get(hf, "mamba_head_dim")
    if "M" in pattern and heads * head_dim != expand * d_model:
        raise CheckpointError(
            f"Nemotron-H converter: mamba_num_heads * mamba_head_dim = {heads * head_dim} must equal expand * "
            f"hidden_size = {expand * d_model} (the mamba2 block's inner width)"
        )
    fields: dict[str, Any] = {
        "vocab_size": _get(hf, "vocab_size"),
        "d_model": d_model,
        "n_layers": len(pattern),
        "pattern": pattern,
        "n_heads": _get(hf, "num_attention_heads"),
        "n_kv_heads": _get(hf, "num_key_value_heads"),
        "head_dim": _first(hf, ("head_dim", "attention_head_dim"), 128),  # transformers' default
        "d_ff": _get(hf, "intermediate_size"),
        "activation": _get(hf, "mlp_hidden_act", "relu2"),
        "mlp_bias": bool(_get(hf, "mlp_bias", False)),
        "d_state": _get(hf, "ssm_state_size"),
        "d_conv": _first(hf, ("conv_kernel", "mamba_d_conv"), 4),
        "expand": expand,
        "mamba_head_dim": head_dim,
        "n_groups": _first(hf, ("n_groups", "mamba_n_groups"), 8),
        "chunk_size": _first(hf, ("chunk_size", "mamba_chunk_size"), 128),
        "conv_bias": bool(_first(hf, ("use_conv_bias", "mamba_conv_bias"), True)),
        "mamba_bias": bool(_get(hf, "use_bias", False)),
        "dt_min": float(_first(hf, ("time_step_min", "mamba_dt_min"), 0.001)),
        "dt_max": float(_first(hf, ("time_step_max", "mamba_dt_max"), 0.1)),
        "dt_init_floor": float(_first(hf, ("time_step_floor", "mamba_dt_init_floor"), 1e-4)),
        "norm_eps": float(_get(hf, "layer_norm_epsilon", 1e-5)),
        "init_std": float(_get(hf, "initializer_range", 0.02)),
        "tie_embeddings": bool(_get(hf, "tie_word_embeddings", False)) if tie_embeddings is None else tie_embeddings,
    }
    return edifice.config("nemotron_h", **{**fields, **overrides})  # type: ignore[return-value]


def map_nemotron_h_state_dict(state_dict: Mapping[str, Tensor], config: NemotronHConfig) -> dict[str, Tensor]:
    """Rename a Nemotron-H state dict to :class:`NemotronH`'s keys; the convolution ``[C, 1, K]`` becomes ``[C, K]``.

    Multi-token-prediction weights (``mtp.*``), which transformers does not load either, are dropped.
    """
    renamed = {}
    for key, value in state_dict.items():
        if _MTP.search(key):
            continue
        for pattern, replacement in _TOP:
            key = pattern.sub(replacement, key)
        renamed[key] = value

    def transform(module: str, value: Tensor) -> Tensor:
        return value.squeeze(1) if module == "mixer.conv1d" and value.dim() == 3 else value

    return rename_state_dict(renamed, _LAYER_KEYS, config, who="Nemotron-H", transform=transform)


def from_nemotron_h(source: Any, **overrides: Any) -> NemotronH:
    """Convert a transformers ``NemotronHForCausalLM``/``NemotronHModel`` (or ``(config, state_dict)``) to nemotron_h.

    A checkpoint's ``lm_head.weight`` is kept as an untied head (transformers never ties it); one without
    (``NemotronHModel``) gets a head tied to the token embedding. Keyword arguments override config fields
    (``output="last"``, ...).
    """
    hf_config, state_dict = _unpack(source)
    # transformers' NemotronHForCausalLM never ties its head (``_tied_weights_keys = {}``, whatever
    # tie_word_embeddings says), so a checkpoint's own head is kept untied; without one the head is the embedding.
    has_head = any(key.endswith("lm_head.weight") for key in state_dict)
    config = nemotron_h_config(hf_config, tie_embeddings=not has_head, **overrides)
    weights = map_nemotron_h_state_dict(state_dict, config)
    return load_converted(NemotronH, config, weights, who="Nemotron-H")
