"""Converters of timm and transformers Vision Transformer checkpoints to ``vit``, ``deit``, ``dino_v2``, ``dino_v3``.

Each ``from_*`` takes the foreign model, or a ``(config, state_dict)`` pair (a timm config is a dict of
``create_model`` keyword arguments; missing sizes are read off the weights' shapes), plus overrides of our config
(e.g. ``image_size=384``: the position embeddings are then resampled bicubically). The weights are renamed, timm's
fused ``qkv`` is split into ``q_proj``/``k_proj``/``v_proj`` and timm's packed SwiGLU ``fc1`` into ``gate_proj``/
``up_proj``; unknown keys raise :class:`~edifice.CheckpointError`. The model is built on the meta device and assigned.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

import edifice
from edifice.errors import CheckpointError
from edifice.plugins import load_object
from edifice.registry import get_spec
from edifice_vision.configs.vit import ViTConfig

__all__ = [
    "from_timm_deit",
    "from_timm_dinov2",
    "from_timm_vit",
    "from_transformers_dinov2",
    "from_transformers_dinov3",
    "map_timm_state_dict",
]

_TIMM_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attn.o_proj",
    "ls1": "ls1",
    "ls2": "ls2",
    "mlp.fc2": "mlp.down_proj",
}
_TIMM_ROOT = {
    "cls_token": "stem.cls_token",
    "dist_token": "stem.dist_token",
    "reg_token": "stem.reg_token",
    "patch_embed.proj.weight": "stem.patch_embed.proj.weight",
    "patch_embed.proj.bias": "stem.patch_embed.proj.bias",
    "norm.weight": "final_norm.weight",
    "norm.bias": "final_norm.bias",
    "fc_norm.weight": "fc_norm.weight",
    "fc_norm.bias": "fc_norm.bias",
    "head.weight": "head.weight",
    "head.bias": "head.bias",
    "head_dist.weight": "head_dist.weight",
    "head_dist.bias": "head_dist.bias",
}


def _unpack(source: Any, who: str) -> tuple[Any, Mapping[str, Tensor]]:
    if isinstance(source, tuple) and len(source) == 2:
        return source[0], source[1]
    if isinstance(source, nn.Module):
        return source, source.state_dict()
    raise TypeError(f"{who} converter: source must be a model or a (config, state_dict) pair, got {type(source)}")


def _load(arch: str, fields: dict[str, Any], weights: dict[str, Tensor], who: str) -> nn.Module:
    """``edifice.build(arch, **fields)`` on the meta device with ``weights`` assigned (strict)."""
    config = edifice.config(arch, **fields)
    model_class: Callable[[Any], nn.Module] = load_object(get_spec(arch).model)
    with torch.device("meta"):
        model = model_class(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{who} converter: the mapped weights do not fit {arch}: {exc}") from None
    return model


# -- timm --------------------------------------------------------------------------------------------------------------
def map_timm_state_dict(
    state_dict: Mapping[str, Tensor], config: ViTConfig, *, no_embed_class: bool
) -> dict[str, Tensor]:
    """Rename (copies of) a timm ``VisionTransformer``'s weights onto our ViT; split ``qkv`` and packed SwiGLU."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        value = tensor.detach().clone()
        if key in _TIMM_ROOT:
            out[_TIMM_ROOT[key]] = value
            continue
        if key == "pos_embed":
            if no_embed_class:  # timm adds no position to the prefix tokens: theirs is ours with zero prefix rows
                n = int(config.class_token) + int("dist_token" in state_dict)
                value = torch.cat([value.new_zeros(1, n, value.shape[-1]), value], dim=1)
            out["stem.pos_embed"] = value
            continue
        match = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if match is None:
            unknown.append(key)
            continue
        index, module, leaf = match.groups()
        prefix = f"stages.{index}"
        if module == "attn.qkv":
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"{prefix}.attn.{name}.{leaf}"] = part.clone()
        elif module == "mlp.fc1":
            if config.ffn == "swiglu":  # timm's SwiGLUPacked: act(first half) * second half
                gate, up = value.chunk(2)
                out[f"{prefix}.mlp.gate_proj.{leaf}"], out[f"{prefix}.mlp.up_proj.{leaf}"] = gate.clone(), up.clone()
            else:
                out[f"{prefix}.mlp.up_proj.{leaf}"] = value
        elif module in _TIMM_BLOCK:
            out[f"{prefix}.{_TIMM_BLOCK[module]}.{leaf}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"timm converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    return out


def _timm_fields(model_or_cfg: Any, state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Any], bool]:
    """Our config fields from a timm model (its attributes) or a dict of ``create_model`` kwargs, and no_embed_class."""
    sd = state_dict
    patch = sd["patch_embed.proj.weight"]
    fields: dict[str, Any] = {
        "d_model": patch.shape[0],
        "in_chans": patch.shape[1],
        "patch_size": patch.shape[-1],
        "n_layers": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
        "ffn_hidden": sd["blocks.0.mlp.fc2.weight"].shape[1],
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "class_token": "cls_token" in sd,
        "num_register_tokens": sd["reg_token"].shape[1] if "reg_token" in sd else 0,
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        "fc_norm": "fc_norm.weight" in sd,
        "layer_scale": 1.0 if "blocks.0.ls1.gamma" in sd else None,
    }
    if sd["blocks.0.mlp.fc1.weight"].shape[0] == 2 * fields["ffn_hidden"]:
        fields["ffn"] = "swiglu"
    if isinstance(model_or_cfg, nn.Module):
        m: Any = model_or_cfg
        fields.update(
            n_heads=m.blocks[0].attn.num_heads,
            image_size=m.patch_embed.img_size[0],
            global_pool=m.global_pool or "",
            norm_eps=m.blocks[0].norm1.eps,
        )
        return fields, bool(m.no_embed_class)
    cfg = dict(model_or_cfg or {})
    no_embed_class = bool(cfg.pop("no_embed_class", False))
    for theirs, ours in (("num_heads", "n_heads"), ("img_size", "image_size"), ("global_pool", "global_pool")):
        if theirs in cfg:
            fields[ours] = cfg.pop(theirs)
    if "pos_embed" in sd and "image_size" not in fields:
        grid = sd["pos_embed"].shape[1] - (
            0 if no_embed_class else int(fields["class_token"]) + int("dist_token" in sd)
        )
        fields["image_size"] = round(grid**0.5) * fields["patch_size"]
    return fields, no_embed_class


def _from_timm(arch: str, source: Any, who: str, overrides: dict[str, Any]) -> nn.Module:
    model_or_cfg, state_dict = _unpack(source, who)
    fields, no_embed_class = _timm_fields(model_or_cfg, state_dict)
    if "n_heads" not in fields and "n_heads" not in overrides:
        raise CheckpointError(f"{who} converter: the number of heads is not in the weights; pass n_heads=...")
    if fields.get("layer_scale") is not None:
        fields["layer_scale"] = float(state_dict["blocks.0.ls1.gamma"].abs().mean())  # init only; weights assigned
    checkpoint_size = fields.get("image_size")
    fields.update(overrides)
    ours = edifice.config(arch, **fields)
    assert isinstance(ours, ViTConfig)
    weights = map_timm_state_dict(state_dict, ours, no_embed_class=no_embed_class)
    model = _load(arch, {**fields, "image_size": checkpoint_size or ours.image_size}, weights, who)
    return _resized(model, fields)


def from_timm_vit(source: Any, **overrides: Any) -> nn.Module:
    """A timm ``VisionTransformer`` (or ``(create_model kwargs, state_dict)``) as ``vit``."""
    return _from_timm("vit", source, "timm ViT", overrides)


def from_timm_deit(source: Any, **overrides: Any) -> nn.Module:
    """A timm ``VisionTransformerDistilled`` (``deit_*_distilled_*``) as ``deit``."""
    return _from_timm("deit", source, "timm DeiT", overrides)


def from_timm_dinov2(source: Any, **overrides: Any) -> nn.Module:
    """A timm ``vit_*_patch14_(reg4_)dinov2`` as ``dino_v2`` (timm resamples with antialiasing; so does this)."""
    return _from_timm("dino_v2", source, "timm DINOv2", {"pos_embed_antialias": True, **overrides})


# -- transformers ------------------------------------------------------------------------------------------------------
_HF_V2_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.attention.query": "attn.q_proj",
    "attention.attention.key": "attn.k_proj",
    "attention.attention.value": "attn.v_proj",
    "attention.output.dense": "attn.o_proj",
    "attention.q_proj": "attn.q_proj",  # transformers >= 5 names
    "attention.k_proj": "attn.k_proj",
    "attention.v_proj": "attn.v_proj",
    "attention.o_proj": "attn.o_proj",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
    "mlp.fc1": "mlp.up_proj",
    "mlp.fc2": "mlp.down_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_HF_V3_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.q_proj": "attn.q_proj",
    "attention.k_proj": "attn.k_proj",
    "attention.v_proj": "attn.v_proj",
    "attention.o_proj": "attn.o_proj",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_HF_ROOT = {
    "embeddings.cls_token": "stem.cls_token",
    "embeddings.register_tokens": "stem.reg_token",
    "embeddings.position_embeddings": "stem.pos_embed",
    "embeddings.patch_embeddings.projection.weight": "stem.patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "stem.patch_embed.proj.bias",
    "embeddings.patch_embeddings.weight": "stem.patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "stem.patch_embed.proj.bias",
    "layernorm.weight": "final_norm.weight",
    "layernorm.bias": "final_norm.bias",
    "norm.weight": "final_norm.weight",
    "norm.bias": "final_norm.bias",
}


def _map_hf(state_dict: Mapping[str, Tensor], layer: str, block: Mapping[str, str], who: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown = []
    pattern = re.compile(rf"^{layer}\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
    for key, tensor in state_dict.items():
        value = tensor.detach().clone()
        if key in _HF_ROOT:
            out[_HF_ROOT[key]] = value
            continue
        if key in ("embeddings.mask_token", "rope_embeddings.inv_freq"):  # masked pre-training only; recomputed
            continue
        match = pattern.match(key)
        if match is None or match.group(2) not in block:
            unknown.append(key)
            continue
        index, module, leaf = match.groups()
        out[f"stages.{index}.{block[module]}.{'gamma' if leaf == 'lambda1' else leaf}"] = value
    if unknown:
        raise CheckpointError(f"{who} converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    return out


def _get(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)


def _hf_size(value: Any) -> int:
    if isinstance(value, list | tuple):
        if value[0] != value[1]:
            raise CheckpointError(f"transformers converter: non-square size {value} is not supported")
        return int(value[0])
    return int(value)


def _hf_common(hf: Any) -> dict[str, Any]:
    return {
        "d_model": _get(hf, "hidden_size"),
        "n_layers": _get(hf, "num_hidden_layers"),
        "n_heads": _get(hf, "num_attention_heads"),
        "in_chans": _get(hf, "num_channels", 3),
        "image_size": _hf_size(_get(hf, "image_size")),
        "patch_size": _hf_size(_get(hf, "patch_size")),
        "norm_eps": _get(hf, "layer_norm_eps"),
        "layer_scale": float(_get(hf, "layerscale_value", 1.0)),
        "num_classes": 0,
    }


def from_transformers_dinov2(source: Any, **overrides: Any) -> nn.Module:
    """A transformers ``Dinov2Model`` or ``Dinov2WithRegistersModel`` (or ``(config, state_dict)``) as ``dino_v2``."""
    who = "transformers DINOv2"
    hf, state_dict = _unpack(source, who)
    hf = getattr(hf, "config", hf)
    act = _get(hf, "hidden_act", "gelu")
    swiglu = bool(_get(hf, "use_swiglu_ffn", False))
    fields = {
        **_hf_common(hf),
        "mlp_ratio": float(_get(hf, "mlp_ratio", 4)),
        "qkv_bias": bool(_get(hf, "qkv_bias", True)),
        "num_register_tokens": int(_get(hf, "num_register_tokens", 0) or 0),
        # transformers' Dinov2WithRegisters resamples E_pos with antialiasing (the registers paper's code), Dinov2 not
        "pos_embed_antialias": _get(hf, "model_type") == "dinov2_with_registers",
        "ffn": "swiglu" if swiglu else "mlp",
        **({} if swiglu else {"activation": act}),
        **overrides,
    }
    weights = _map_hf(state_dict, "encoder.layer", _HF_V2_BLOCK, who)
    return _resized(_load("dino_v2", {**fields, "image_size": _hf_common(hf)["image_size"]}, weights, who), fields)


def from_transformers_dinov3(source: Any, **overrides: Any) -> nn.Module:
    """A transformers ``DINOv3ViTModel`` (or ``(config, state_dict)``) as ``dino_v3``."""
    who = "transformers DINOv3"
    hf, state_dict = _unpack(source, who)
    hf = getattr(hf, "config", hf)
    if not (_get(hf, "query_bias") and _get(hf, "value_bias") and _get(hf, "proj_bias") and _get(hf, "mlp_bias")):
        raise CheckpointError(f"{who} converter: only query/value/proj/mlp biases on (the released models) map")
    gated = bool(_get(hf, "use_gated_mlp", False))
    act = _get(hf, "hidden_act", "gelu")
    if gated and act != "silu":
        raise CheckpointError(f"{who} converter: a gated MLP must use silu (SwiGLU), got {act!r}")
    fields = {
        **_hf_common(hf),
        "ffn_hidden": int(_get(hf, "intermediate_size")),
        "key_bias": bool(_get(hf, "key_bias", False)),
        "num_register_tokens": int(_get(hf, "num_register_tokens", 0) or 0),
        "rope_theta": float(_get(hf, "rope_theta", 100.0)),
        "ffn": "swiglu" if gated else "mlp",
        **({} if gated else {"activation": act}),
        **overrides,
    }
    weights = _map_hf(state_dict, "model.layer", _HF_V3_BLOCK, who)
    return _load("dino_v3", fields, weights, who)


def _resized(model: nn.Module, fields: dict[str, Any]) -> nn.Module:
    """``model`` rebuilt for ``fields`` (another ``image_size``: ``E_pos`` resampled on load), else unchanged."""
    current: Any = model.config
    config = edifice.config(current.arch, **fields)
    if config == current:
        return model
    target = type(model)(config)
    target.load_state_dict(model.state_dict(), strict=True)
    return target
