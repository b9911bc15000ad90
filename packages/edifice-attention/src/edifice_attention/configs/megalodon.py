"""Config of ``megalodon``: Megalodon (Ma et al. 2024), complex EMA, timestep norm and normalized chunk attention.

The model is :mod:`edifice_attention.megalodon`: pre-norm layers of timestep normalization (§3.2), the complex
exponential moving average CEMA (§3.1), normalized attention within chunks of ``window_size`` (§3.3) and a
normalized feed-forward network on the two-hop residual (§3.4); a timestep norm ends the stack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "MegalodonConfig"]

MA_2024 = Paper(
    "Megalodon: Efficient LLM Pretraining and Inference with Unlimited Context Length", "Ma et al.", 2024, "2404.08801"
)


@dataclasses.dataclass(kw_only=True)
class MegalodonConfig(SequenceConfig):
    """Megalodon (Ma et al. 2024): CEMA + timestep norm + normalized chunk-wise attention + two-hop residual FFN."""

    arch: str = field("megalodon", "Registry name of the architecture this config builds.")
    n_heads: int = field(1, "Attention heads (z_dim and v_dim split evenly over them; Megalodon-7B: 4).")
    ema_dim: int = field(16, "Complex EMA dimensions per channel (the authors' cema_ndim: 16).")
    z_dim: int | None = field(None, "Width of the shared query/key representation Z; None: d_model // 4.")
    v_dim: int | None = field(None, "Width of the values and the attention output; None: 2 * d_model.")
    d_ff: int | None = field(None, "Hidden size of the normalized FFN; None: 2 * d_model (7B: 11264 for 4096).")
    swiglu: bool = field(False, "SwiGLU feed-forward (the 7B model's) instead of SiLU.")
    window_size: int | None = field(2048, "Chunk size of the chunk-wise attention (§3.5); None: full attention.")
    norm_groups: int = field(32, "Groups of the timestep norm (§3.2); must divide d_model.")
    norm_eps: float = field(1e-5, "Epsilon of every norm.")
    rope_base: float = field(10000.0, "RoPE base of the queries and keys (positions counted within each chunk).")
    rescale_ffn: bool = field(False, "Layer-scale the FFN output by 0.1 * 0.5^layer (the authors' rescale_nffn).")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "chunk_size": "window_size",
        "cema_ndim": "ema_dim",
        "norm_num_groups": "norm_groups",
        "ffn_hidden_dim": "d_ff",
        "value_dim": "v_dim",
    }

    def validate(self) -> None:
        """Positive sizes; heads divide the widths; groups divide d_model; even query/key heads for RoPE."""
        super().validate()
        self.check_positive("n_heads", "ema_dim", "z_dim", "v_dim", "window_size", "norm_groups", "norm_eps")
        self.check_positive("d_ff", allow_zero=True)
        self.check_divides("norm_groups", "d_model")
        for name, width in (("z_dim", self.z_width), ("v_dim", self.v_width)):
            if width % self.n_heads:
                self.fail(name, f"gives {width}, which must divide by n_heads={self.n_heads}")
        if (self.z_width // self.n_heads) % 2:
            self.fail("z_dim", f"gives a query/key head size {self.z_width // self.n_heads}; RoPE needs it even")
        if not self.rope_base > 1.0:
            self.fail("rope_base", f"must be > 1, got {self.rope_base}")

    @property
    def z_width(self) -> int:
        """The resolved ``z_dim``."""
        return self.z_dim if self.z_dim is not None else max(2, self.d_model // 4)

    @property
    def v_width(self) -> int:
        """The resolved ``v_dim``."""
        return self.v_dim if self.v_dim is not None else 2 * self.d_model

    @property
    def ffn_hidden(self) -> int:
        """The resolved ``d_ff`` (0: no feed-forward)."""
        return self.d_ff if self.d_ff is not None else 2 * self.d_model


SPECS = (
    ArchSpec(
        name="megalodon",
        family="attention",
        distribution="edifice-attention",
        summary="Megalodon: complex EMA, timestep norm, normalized chunk-wise attention, two-hop residual.",
        paper=MA_2024,
        config="edifice_attention.configs.megalodon:MegalodonConfig",
        model="edifice_attention.megalodon:Megalodon",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={
            "d_model": 24,
            "n_layers": 2,
            "n_heads": 2,
            "ema_dim": 4,
            "z_dim": 8,
            "v_dim": 16,
            "d_ff": 32,
            "norm_groups": 4,
            "vocab_size": 40,
            "window_size": 4,
        },
        causal=True,
        stateful=True,
        variable_length=True,
        verification="oracle:Ma et al. 2024 §3.1 CEMA recurrence, §3.2 timestep norm, §3.3-3.4 layer, fp64",
    ),
)
