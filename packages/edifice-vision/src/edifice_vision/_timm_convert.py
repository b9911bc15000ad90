"""Shared steps of the converters from timm checkpoints (a model or its state dict) onto the family's CNNs.

:func:`timm_state_dict` accepts a timm model or a state dict (and refuses TensorFlow-"SAME"-padded ``tf_*`` models,
whose padding depends on the input size); :func:`rename_keys` maps every key through an ordered table of regular
expressions (an unknown key raises, naming it); :func:`load_converted` builds the entry on the meta device and
assigns the weights strictly, with a report of what did not fit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from edifice.errors import CheckpointError

__all__ = [
    "assert_matches_timm",
    "bn_eps",
    "load_converted",
    "redraw_batchnorm",
    "rename_keys",
    "timm_state_dict",
    "weight_shape",
]

M = TypeVar("M", bound=nn.Module)
#: A rename rule: a regular expression and its replacement (a template, or a function of the match; ``None`` drops).
Rule = tuple[str, str | Callable[[re.Match[str]], str | None]]


def timm_state_dict(source: Any, *, who: str) -> dict[str, Tensor]:
    """The state dict of a timm model (``nn.Module``) or of a mapping of tensors, as detached copies."""
    if isinstance(source, nn.Module):
        same = [name for name, m in source.named_modules() if type(m).__name__ in ("Conv2dSame", "MixedConv2d")]
        if same:
            raise CheckpointError(
                f"{who} converter: {same[0]!r} is a {type(source.get_submodule(same[0])).__name__}; TensorFlow-'SAME' "
                "padding and mixed kernels (timm's tf_* and mixnet models) are not supported"
            )
        source = source.state_dict()
    if not isinstance(source, Mapping) or not all(isinstance(v, Tensor) for v in source.values()):
        raise CheckpointError(f"{who} converter: expected a timm model or a state dict of tensors, got {type(source)}")
    return {k: v.detach().clone() for k, v in source.items()}


def bn_eps(source: Any, default: float = 1e-5) -> float:
    """The BatchNorm epsilon of a timm model (the first BatchNorm's), or ``default`` for a state dict."""
    if isinstance(source, nn.Module):
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                return float(m.eps)
    return default


def weight_shape(state_dict: Mapping[str, Tensor], key: str, *, who: str) -> tuple[int, ...]:
    """The shape of ``state_dict[key]``, or a :class:`CheckpointError` naming the missing key."""
    if key not in state_dict:
        raise CheckpointError(f"{who} converter: the state dict has no {key!r}; is it a timm {who} checkpoint?")
    return tuple(state_dict[key].shape)


def rename_keys(state_dict: Mapping[str, Tensor], rules: Sequence[Rule], *, who: str) -> dict[str, Tensor]:
    """Rename every key by the first rule whose pattern matches it whole; keys no rule matches raise."""
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        for pattern, repl in compiled:
            match = pattern.fullmatch(key)
            if match is None:
                continue
            name = repl(match) if callable(repl) else match.expand(repl)
            if name is not None:
                out[name] = value
            break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{who} converter: unexpected keys in the state dict: {', '.join(sorted(unknown))}")
    return out


def load_converted(model_class: Callable[[Any], M], config: Any, weights: dict[str, Tensor], *, who: str) -> M:
    """Build ``model_class(config)`` on the meta device and assign ``weights`` (strict, shapes checked)."""
    with torch.device("meta"):
        model = model_class(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{who} converter: the mapped weights do not fit {config.arch}: {exc}") from None
    return model


# -- parity checks (the family's signature tests use these) --------------------------------------------------------
@torch.no_grad()
def redraw_batchnorm(module: nn.Module, *, seed: int = 0) -> nn.Module:
    """Draw every BatchNorm's running statistics away from (0, 1): mean ~ N(0, 0.3^2), variance ~ U(0.5, 2)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
    return module


@torch.no_grad()
def assert_matches_timm(ours: Any, theirs: Any, images: Tensor, *, atol: float = 1e-5) -> None:
    """Logits, pooled pre-logits, unpooled features and every feature level (with ``feature_info``) agree with timm."""
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(images=images), theirs(images), atol=atol, rtol=1e-5)
    torch.testing.assert_close(ours.forward_features(images), theirs.forward_features(images), atol=atol, rtol=1e-5)
    torch.testing.assert_close(
        ours.forward_head(ours.forward_features(images), pre_logits=True),
        theirs.forward_head(theirs.forward_features(images), pre_logits=True),
        atol=atol,
        rtol=1e-5,
    )
    mine = ours.forward_intermediates(images, intermediates_only=True)
    timm_maps = theirs.forward_intermediates(images, intermediates_only=True)
    assert len(mine) == len(timm_maps), f"{len(mine)} feature levels, timm has {len(timm_maps)}"
    for a, b in zip(mine, timm_maps, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)
    info = [(f.num_chs, f.reduction) for f in ours.feature_info]
    assert info == [(f["num_chs"], f["reduction"]) for f in theirs.feature_info], f"feature_info {info}"
    assert [m.shape[1] for m in mine] == [c for c, _ in info]
