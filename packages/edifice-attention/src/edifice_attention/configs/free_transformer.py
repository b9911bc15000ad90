"""Config of ``free_transformer``: a decoder conditioned on per-token random latents Z, trained as a conditional VAE.

The model is :mod:`edifice_attention.free_transformer` (Fleuret 2025, arXiv:2510.17558): the ``decoder_only`` stack
(every field of :class:`~edifice_attention.configs.decoder_only.DecoderOnlyConfig` applies) whose middle block
(index ``n_layers // 2``) reads its keys and values from ``X + post_sampler_fc(Z)``, with ``Z_t`` one of
``2^num_latent_bits`` codes per token. In training Z comes from an encoder (one extra non-causal block with a learned
query, a readout to ``num_latent_bits`` logits and the Binary Mapper); in generation from the uniform prior. The
training loss adds the KL to the prior above ``free_bits`` bits per token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice.spec import TensorSpec
from edifice_attention.configs.decoder_only import DecoderOnlyConfig

__all__ = ["MAX_LATENT_BITS", "SPECS", "Z_INPUT", "FreeTransformerConfig"]

FLEURET = Paper("The Free Transformer", "Fleuret", 2025, "2510.17558")

#: The optional ``z`` keyword of ``forward``/``step`` (validated like an input; not in the spec's inputs, which the
#: registry-wide harnesses fill with example values).
Z_INPUT = TensorSpec(
    ("B", "T"),
    dtype="int64",
    domain="int[0, 2 ** num_latent_bits)",
    optional=True,
    doc="Latent codes Z_t; default: the encoder's samples in training, the prior's in eval.",
)

#: ``post_sampler_fc`` has ``2^H`` input features; past 24 bits it alone would hold more than 16M x d_model weights.
MAX_LATENT_BITS = 24


@dataclasses.dataclass(kw_only=True)
class FreeTransformerConfig(DecoderOnlyConfig):
    """Free Transformer: ``block_{L/2}(in_q=X, in_kv=X + W Z)``, ``Z_t`` one-hot of ``2^H`` codes, ELBO training."""

    arch: str = field("free_transformer", "Registry name of the architecture this config builds.")
    num_latent_bits: int = field(
        16, "H: bits of the latent per token; Z_t is one of 2^H codes (the paper's H = 16, 65,536 codes)."
    )
    free_bits: float = field(
        0.5,
        "Free-bits threshold κ of the KL term in bits per token (κ = free_bits · ln 2 nats); the paper's 8B model "
        "uses 1/2 bit.",
    )

    aliases: ClassVar[Mapping[str, str]] = {
        **DecoderOnlyConfig.aliases,
        "latent_bits": "num_latent_bits",
        "kappa_bits": "free_bits",
    }

    def validate(self) -> None:
        """At least one latent bit (at most :data:`MAX_LATENT_BITS`), κ >= 0, dense FFNs."""
        super().validate()
        self.check_range("num_latent_bits", 1, MAX_LATENT_BITS)
        if not isinstance(self.num_latent_bits, int):
            self.fail("num_latent_bits", "must be an int")
        self.check_positive("free_bits", allow_zero=True)
        if self.n_experts:
            self.fail("n_experts", "must be 0: the Free Transformer's blocks have dense FFNs (as the paper's)")

    @property
    def injection_layer(self) -> int:
        """Index of the block whose keys and values receive the latent: ``n_layers // 2`` (the paper's L/2 + 1)."""
        return self.n_layers // 2

    @property
    def num_codes(self) -> int:
        """``C = 2^H``: the number of values of each ``Z_t``."""
        return int(2**self.num_latent_bits)


SPECS = (
    ArchSpec(
        name="free_transformer",
        family="transformer",
        distribution="edifice-attention",
        summary="Free Transformer: a decoder whose middle block's keys/values get a per-token random latent Z "
        "(2^H codes), learned as a conditional VAE with a one-block encoder, Binary Mapper and free-bits KL.",
        paper=FLEURET,
        config="edifice_attention.configs.free_transformer:FreeTransformerConfig",
        model="edifice_attention.free_transformer:FreeTransformer",
        tiny={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_ff": 64,
            "vocab_size": 64,
            "num_latent_bits": 4,
        },
        inputs=sequence_inputs(),
        outputs={
            **sequence_outputs(),
            "aux_loss": TensorSpec(
                (), doc="Free-bits KL of the encoder's Z to the uniform prior (0 with a prior or given Z)."
            ),
        },
        causal=True,
        stateful=True,
        variable_length=True,
        stochastic=True,
        reasons={
            "stochastic": "training draws Z's bits from the encoder's Bernoullis; the prior's codes are a seeded "
            "counter-based draw (a row's seed from `generator`, 0 without), so eval is deterministic by default",
        },
        verification="oracle:Binary Mapper eqs. 6-8 (code probabilities G and the straight-through gradient), "
        "the free-bits KL and Algorithm 1 in fp64; property: Z changes hidden states only from block L/2 on",
    ),
)
