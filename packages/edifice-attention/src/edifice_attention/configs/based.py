"""Config of ``based``: the Based hybrid of Taylor linear attention, sliding-window attention and short convolutions
(torch-free); the model is :mod:`edifice_attention.based`."""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._linear_attention import MixerStackConfig, linear_attention_spec

__all__ = ["LAYER_KINDS", "SPECS", "BasedConfig"]

ARORA = Paper(
    "Simple linear attention language models balance the recall-throughput tradeoff",
    "Arora et al.",
    2024,
    "2402.18668",
)

#: Token mixers of a Based stack: Taylor linear attention, sliding-window softmax attention, gated short convolution.
LAYER_KINDS = ("based", "swa", "conv")


@dataclasses.dataclass(kw_only=True)
class BasedConfig(MixerStackConfig):
    """Based (Arora et al. 2024): Taylor-feature linear attention + sliding-window attention + gated convolutions."""

    arch: str = field("based", "Registry name of the architecture this config builds.")
    n_heads: int = field(16, "Heads of the linear and the sliding-window attention (the authors' 360M: 16).")
    feature_dim: int = field(16, "Query/key size per head before the Taylor map (§3.2; the authors: 16).")
    taylor_order: int = field(2, "Order of the Taylor feature map: 2, φ(x) = [1, x, x⊗x/√2] (§3.2).")
    normalizer_eps: float = field(1e-12, "Added to the linear attention's normaliser (the authors' eps).")
    window_size: int = field(256, "Keys each sliding-window attention query sees, itself included (the authors: 256).")
    rope_base: float = field(10000.0, "RoPE base of the sliding-window attention.")
    conv_expand: int = field(4, "The gated convolution's input projection is conv_expand·d_model, split in two halves.")
    conv_size: int = field(3, "Kernel size of the gated short convolution (the authors: 3).")
    conv_proj_bias: bool = field(True, "Biases in the gated convolution's projections (the authors: True).")
    layer_pattern: tuple[str, ...] = field(
        ("conv", "based", "swa", "conv", "conv"),
        "Mixer of layer i is layer_pattern[i % len]: 'based', 'swa' or 'conv' (the authors' 360M period of five).",
    )
    chunk_size: int = field(64, "Steps per chunk of the linear attention's chunked (training) form.")
    norm_eps: float = field(1e-5, "Epsilon of every norm.")

    def validate(self) -> None:
        """Heads divide d_model; a second-order map; known layer kinds; positive sizes."""
        super().validate()
        self.check_positive("n_heads", "feature_dim", "normalizer_eps", "window_size", "conv_expand", "conv_size")
        self.check_positive("chunk_size", "rope_base")
        if self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model}")
        if (self.d_model // self.n_heads) % 2:
            self.fail("n_heads", f"gives an odd head size {self.d_model // self.n_heads}; RoPE needs an even one")
        if self.taylor_order != 2:
            self.fail("taylor_order", "only the paper's second-order map (2) is implemented")
        if self.conv_expand * self.d_model % 2:
            self.fail("conv_expand", "conv_expand·d_model must be even (two halves)")
        if not self.layer_pattern:
            self.fail("layer_pattern", f"must name at least one of {', '.join(LAYER_KINDS)}")
        for kind in self.layer_pattern:
            if kind not in LAYER_KINDS:
                self.fail("layer_pattern", f"has {kind!r}; valid kinds: {', '.join(LAYER_KINDS)}")

    def default_d_ff(self) -> int:
        """2·d_model (the authors' n_inner with a SwiGLU MLP)."""
        return 2 * self.d_model

    def layer_kind(self, index: int) -> str:
        """The mixer kind of layer ``index``."""
        return self.layer_pattern[index % len(self.layer_pattern)]


SPECS = (
    linear_attention_spec(
        "based",
        "edifice_attention.configs.based:BasedConfig",
        "edifice_attention.based:Based",
        "Based: linear attention with a 2nd-order Taylor feature map, sliding-window attention and short convolutions.",
        ARORA,
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "feature_dim": 4,
            "window_size": 4,
            "d_ff": 32,
            "d_in": 12,
            "chunk_size": 4,
            "layer_pattern": ("based", "swa"),
        },
        verification="parity:fla.layers.BasedLinearAttention",
    ),
)
