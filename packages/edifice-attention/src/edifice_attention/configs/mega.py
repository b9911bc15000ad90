"""Config of ``mega``: Mega, moving-average equipped gated attention (Ma et al., ICLR 2023), torch-free.

The model is :mod:`edifice_attention.mega`: a causal stack of Mega layers (multi-dimensional damped EMA, then
single-head gated attention with reset and update gates, §3) each followed by a normalized feed-forward network.
``window_size`` turns on Mega-chunk (§3.5: attention within fixed chunks, the EMA still spans the whole sequence).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "MegaConfig"]

MA_2023 = Paper("Mega: Moving Average Equipped Gated Attention", "Ma et al.", 2023, "2209.10655")


@dataclasses.dataclass(kw_only=True)
class MegaConfig(SequenceConfig):
    """Mega (Ma et al. 2023): damped-EMA-fed single-head gated attention and a normalized FFN per layer."""

    arch: str = field("mega", "Registry name of the architecture this config builds.")
    ema_dim: int = field(16, "EMA dimensions h per channel (the paper's expansion dimension; Mega: 16).")
    z_dim: int | None = field(None, "Width z of the shared query/key representation Z; None: d_model // 4.")
    v_dim: int | None = field(None, "Width v of the values and the attention output; None: 2 * d_model.")
    d_ff: int | None = field(None, "Hidden size of the normalized FFN after each layer; None: 2 * d_model; 0: none.")
    laplace_attention: bool = field(False, "Laplace attention function (eq. 10's f, §3.3) instead of softmax.")
    window_size: int | None = field(None, "Chunk size of Mega-chunk attention (§3.5); None: full causal attention.")
    seq_len: int = field(1024, "Learned relative-position biases: distances >= seq_len share the last one.")
    norm: str = field("layernorm", "Norm of the layers: 'layernorm' (Mega) or 'rmsnorm'.")
    norm_eps: float = field(1e-5, "Epsilon of every norm.")
    prenorm: bool = field(True, "Normalise each sublayer's input (and add a final norm) instead of its output.")
    scale_embeddings: bool = field(True, "Multiply token embeddings by sqrt(d_model) (Mega's language models).")

    aliases: ClassVar[Mapping[str, str]] = {**SequenceConfig.aliases, "chunk_size": "window_size", "ndim": "ema_dim"}

    def validate(self) -> None:
        """Positive sizes; a known norm."""
        super().validate()
        self.check_positive("ema_dim", "z_dim", "v_dim", "window_size", "seq_len", "norm_eps")
        self.check_positive("d_ff", allow_zero=True)
        self.check_choice("norm", ("layernorm", "rmsnorm"))

    @property
    def z_width(self) -> int:
        """The resolved ``z_dim``."""
        return self.z_dim if self.z_dim is not None else max(1, self.d_model // 4)

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
        name="mega",
        family="attention",
        distribution="edifice-attention",
        summary="Mega: multi-dimensional damped EMA feeding single-head gated attention with reset and update gates.",
        paper=MA_2023,
        config="edifice_attention.configs.mega:MegaConfig",
        model="edifice_attention.mega:Mega",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={
            "d_model": 24,
            "n_layers": 2,
            "ema_dim": 4,
            "z_dim": 8,
            "v_dim": 32,
            "d_ff": 32,
            "vocab_size": 40,
            "window_size": 4,
            "seq_len": 8,
        },
        causal=True,
        stateful=True,
        variable_length=True,
        verification="oracle:Ma et al. 2023 eq. 2-4 (damped EMA recurrence) and eq. 5-14 (gated attention), fp64",
    ),
)
