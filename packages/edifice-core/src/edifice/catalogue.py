"""The catalogue of every planned architecture (name -> family, distribution), shipped as data in core.

It lets an unknown-architecture error say which distribution to install even when that distribution is absent, and
tell a *planned* entry (its distribution is not released yet, or the installed version does not register it yet) from
a *missing* one (released, not installed).
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from importlib import resources

from edifice.spec import BlockSpec

__all__ = [
    "BLOCK_PROVIDERS",
    "CORE_BLOCKS",
    "RELEASED",
    "CatalogueEntry",
    "catalogue",
    "install_hint",
    "is_first_party",
    "normalize_distribution",
]

#: Distributions the meta package ``edifice`` has extras for: what is released (a test checks this against
#: packages/edifice/pyproject.toml, so adding a family's extras there means adding it here).
RELEASED: frozenset[str] = frozenset(
    {
        "edifice-arena",
        "edifice-attention",
        "edifice-generative",
        "edifice-kernels",
        "edifice-quant",
        "edifice-recurrent",
        "edifice-ssm",
        "edifice-vision",
    }
)

#: This project's distributions that register no architecture, so the catalogue's rows do not name them.
_WITHOUT_ARCHITECTURES = ("edifice-core", "edifice-kernels", "edifice-arena")

#: Blocks other distributions may ask for by name, and the distribution that provides each.
BLOCK_PROVIDERS: dict[str, str] = {
    "mamba": "edifice-ssm",
    "mamba2": "edifice-ssm",
    "hyena": "edifice-ssm",
    "unet": "edifice-vision",
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


@functools.cache
def _first_party() -> frozenset[str]:
    return frozenset({entry.distribution for entry in catalogue().values()} | set(_WITHOUT_ARCHITECTURES))


def normalize_distribution(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Edifice_SSM`` is ``edifice-ssm``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_first_party(distribution: str | None) -> bool:
    """Whether ``distribution`` is one of this project's (a family of DESIGN section 2, core, kernels or arena)."""
    return distribution is not None and normalize_distribution(distribution) in _first_party()
