"""The catalogue of every planned architecture (name -> family, distribution), shipped as data in core.

It lets an unknown-architecture error say which distribution to install even when that distribution is absent.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources

from edifice.spec import BlockSpec

__all__ = ["BLOCK_PROVIDERS", "CORE_BLOCKS", "CatalogueEntry", "catalogue", "install_hint"]

#: Blocks other distributions may ask for by name, and the distribution that provides each.
BLOCK_PROVIDERS: dict[str, str] = {
    "mamba": "edifice-ssm",
    "mamba2": "edifice-ssm",
    "hyena": "edifice-ssm",
}

#: The generic blocks core itself provides; the registry holds them from the start (no plugin needed).
CORE_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec("rmsnorm", "edifice.blocks.norms:RMSNorm", "Root-mean-square norm (optionally zero-centred)."),
    BlockSpec("layernorm", "edifice.blocks.norms:LayerNorm", "Layer norm with optional bias, computed in fp32."),
    BlockSpec("mlp", "edifice.blocks.ffn:FeedForward", "Two-layer feed-forward network."),
    BlockSpec("swiglu", "edifice.blocks.ffn:GatedFeedForward", "Gated feed-forward network (SwiGLU by default)."),
    BlockSpec("moe", "edifice.blocks.moe:MoEFeedForward", "Top-k routed mixture of gated FFN experts."),
    BlockSpec("rope", "edifice.blocks.rope:RotaryEmbedding", "Rotary position embedding with context scalings."),
    BlockSpec("causal_conv1d", "edifice.blocks.conv:CausalDepthwiseConv1d", "Causal depthwise conv over time."),
    BlockSpec("sinusoidal_positions", "edifice.blocks.positional:SinusoidalPositionalEmbedding", "Fixed encoding."),
    BlockSpec("learned_positions", "edifice.blocks.positional:LearnedPositionalEmbedding", "Learned positions."),
    BlockSpec("timestep_embedding", "edifice.blocks.positional:TimestepEmbedding", "Diffusion timestep embedding."),
    # -- attention / transformer blocks: added by their author -----------------------------------------------------
    BlockSpec("attention", "edifice.blocks.attention:Attention", "Multi-head / grouped-query self-attention."),
    BlockSpec("cross_attention", "edifice.blocks.attention:CrossAttention", "Attention from x to a context."),
    BlockSpec("transformer_block", "edifice.blocks.transformer:TransformerBlock", "Mixer + FFN residual block."),
)


@dataclass(frozen=True)
class CatalogueEntry:
    """One row of the catalogue."""

    name: str
    family: str
    distribution: str
    paper: str


@functools.cache
def catalogue() -> dict[str, CatalogueEntry]:
    """Every catalogue row, by registry name."""
    text = resources.files("edifice").joinpath("data/catalogue.tsv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    return {r["name"]: CatalogueEntry(r["name"], r["family"], r["distribution"], r["paper"]) for r in rows}


def install_hint(distribution: str) -> str:
    """The pip command that installs ``distribution`` through the meta package's extras."""
    short = distribution.removeprefix("edifice-")
    return f'pip install "edifice[{short}]"'
