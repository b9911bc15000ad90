"""Reusable layers shared by every family, and the registry of named blocks.

Core's generic blocks are imported from here (``from edifice.blocks import RMSNorm, get_ffn``). Blocks that one
distribution provides for another (a Mamba-2 mixer reused by a hybrid) are fetched by name with :func:`get`, never
imported, so distributions depend only on core::

    Mixer = edifice.blocks.get("mamba2")  # MissingDependency with the install line if edifice-ssm is absent

Core registers its own blocks under the names in :data:`edifice.catalogue.CORE_BLOCKS` (``"rmsnorm"``,
``"swiglu"``, ``"moe"``, ``"rope"``, ``"causal_conv1d"``, ...); plugins add theirs through ``register_blocks``.
"""

from __future__ import annotations

from torch import nn

from edifice._text import did_you_mean
from edifice.blocks.activations import get_activation
from edifice.blocks.attention import Attention, CrossAttention
from edifice.blocks.backbone import SequenceBackbone, SequenceOutput, SequenceState
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.ffn import FeedForward, GatedFeedForward, get_ffn
from edifice.blocks.kv_cache import DynamicKVCache, KVCache, SlidingWindowKVCache, StaticKVCache
from edifice.blocks.masks import (
    causal_mask,
    combine_masks,
    lengths_to_mask,
    padding_mask,
    position_mask,
    segment_mask,
    sliding_window_mask,
)
from edifice.blocks.moe import MoEFeedForward
from edifice.blocks.norms import LayerNorm, RMSNorm, get_norm
from edifice.blocks.positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    TimestepEmbedding,
    timestep_features,
)
from edifice.blocks.rope import RopeScaling, RotaryEmbedding, apply_rotary
from edifice.blocks.transformer import TransformerBlock
from edifice.catalogue import BLOCK_PROVIDERS
from edifice.errors import MissingDependency
from edifice.plugins import get_registry, load_object
from edifice.registry import why_absent

__all__ = [
    "Attention",
    "CausalDepthwiseConv1d",
    "CrossAttention",
    "DynamicKVCache",
    "FeedForward",
    "GatedFeedForward",
    "KVCache",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MoEFeedForward",
    "RMSNorm",
    "RopeScaling",
    "RotaryEmbedding",
    "SequenceBackbone",
    "SequenceOutput",
    "SequenceState",
    "SinusoidalPositionalEmbedding",
    "SlidingWindowKVCache",
    "StaticKVCache",
    "TimestepEmbedding",
    "TransformerBlock",
    "apply_rotary",
    "causal_mask",
    "combine_masks",
    "get",
    "get_activation",
    "get_ffn",
    "get_norm",
    "lengths_to_mask",
    "names",
    "padding_mask",
    "position_mask",
    "segment_mask",
    "sliding_window_mask",
    "timestep_features",
]


def names() -> list[str]:
    """Sorted names of every registered block (core's and the installed plugins')."""
    return sorted(get_registry().items("blocks"))


def get(name: str) -> type[nn.Module]:
    """The block class registered as ``name``; :class:`~edifice.MissingDependency` (with the install line) if none."""
    if not isinstance(name, str):
        raise TypeError(f"block name must be a str, got {type(name).__name__}")
    blocks = get_registry().items("blocks")
    spec = blocks.get(name)
    if spec is None:
        provider = BLOCK_PROVIDERS.get(name)
        if provider is not None:
            # The provider may be missing, not released yet, or released without this block: why_absent says which.
            raise MissingDependency(f"no installed plugin provides the block {name!r}; {why_absent(provider)}")
        raise MissingDependency(
            f"unknown block {name!r}; registered blocks: {', '.join(sorted(blocks))}.{did_you_mean(name, blocks)}"
        )
    cls = load_object(spec.target)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"block {name!r}: {spec.target} is not an nn.Module subclass (got {cls!r})")
    return cls
