"""Config of ``diff_transformer``: the Differential Transformer (Ye et al., ICLR 2025) (torch-free).

The model is :mod:`edifice_attention.diff_transformer`: the ``decoder_only`` stack whose attention subtracts two
softmax maps. ``n_heads`` counts differential heads; each has two query/key heads of ``head_dim`` and one value head
of ``2 * head_dim`` (the paper's ``h = d_model / 2d``).
"""

from __future__ import annotations

import dataclasses

from edifice import Paper, field
from edifice_attention.configs._attention_variants import variant_spec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["SPECS", "DiffTransformerConfig"]

YE = Paper("Differential Transformer", "Ye et al.", 2025, "2410.05258")


@dataclasses.dataclass(kw_only=True)
class DiffTransformerConfig(DecoderOnlyConfig):
    """Differential attention ``(softmax(Q1 K1^T) - λ softmax(Q2 K2^T)) V`` in a Llama-style stack."""

    arch: str = field("diff_transformer", "Registry name of the architecture this config builds.")
    n_heads: int = field(2, "Number of differential heads (each holds two query/key heads and a 2*head_dim value).")
    n_kv_heads: int | None = field(None, "Differential key/value heads (divides n_heads); None means n_heads.")
    head_dim: int | None = field(
        None, "Size of each query/key head; None means d_model // (2 * n_heads). Value heads are twice as wide."
    )
    lambda_init: float | None = field(
        None, "Fixed λ_init of every layer; None means the paper's 0.8 - 0.6 exp(-0.3 (l - 1)) for layer l = 1..L."
    )
    lambda_std: float = field(0.1, "Standard deviation of the normal initialisation of λ_q1, λ_k1, λ_q2, λ_k2.")
    head_norm_eps: float = field(1e-5, "Epsilon of the per-head RMSNorm on the differential output (authors' 1e-5).")

    def validate(self) -> None:
        """Query/key heads come in pairs: 2 * n_heads must divide d_model unless head_dim is given."""
        super().validate()
        self.check_positive("lambda_std", "head_norm_eps")
        if self.head_dim is None and self.d_model % (2 * self.n_heads):
            self.fail("n_heads", f"2 * n_heads must divide d_model={self.d_model} (or set head_dim)")
        if self.lambda_init is not None and not -1.0 < self.lambda_init < 1.0:
            self.fail("lambda_init", "must lie in (-1, 1) (the output is scaled by 1 - λ_init)")

    @property
    def head_size(self) -> int:
        """Size of each query/key head: ``head_dim`` or ``d_model // (2 n_heads)``."""
        return self.head_dim if self.head_dim is not None else self.d_model // (2 * self.n_heads)


SPECS = (
    variant_spec(
        "diff_transformer",
        "Differential attention: the difference of two softmax maps (learnable λ), per-head RMSNorm, (1 - λ_init).",
        YE,
        tiny={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "vocab_size": 64},
        verification="oracle:Ye et al. 2025 eq. 1-3 (fp64) and λ = 0 equals the first softmax map",
    ),
)
