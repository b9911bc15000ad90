"""Config of ``byte_latent_transformer``: Meta's Byte Latent Transformer (BLT), a byte LM over dynamic patches.

The model is :mod:`edifice_attention.byte_latent_transformer`: byte + hash n-gram embeddings, a light local encoder
whose cross-attention pools bytes into patches, a causal latent transformer over patches, and a local decoder that
cross-attends each byte to the patch that last closed before predicting the next byte (Pagnoni et al. 2024). Patch
boundaries come from a fixed stride or from the next-byte entropy of a small byte LM (``decoder_only``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchConfig, ArchSpec, Converter, Paper, TensorSpec, field

__all__ = ["CONVERTERS", "SPECS", "ByteLatentTransformerConfig"]

PAGNONI = Paper("Byte Latent Transformer: Patches Scale Better Than Tokens", "Pagnoni et al.", 2024, "2412.09871")


@dataclasses.dataclass(kw_only=True)
class ByteLatentTransformerConfig(ArchConfig):
    """BLT sizes (defaults: the released BLT-1B), patching, hash n-gram embeddings and the entropy model."""

    arch: str = field("byte_latent_transformer", "Registry name of the architecture this config builds.")
    vocab_size: int = field(
        260, "Input vocabulary: BLT uses 260, 256 byte values + 4 special ids (its OFFSET), byte b has id b + 4."
    )
    byte_dim: int = field(1024, "Width of the local encoder and decoder (byte level).")
    latent_dim: int = field(2048, "Width of the latent (global) transformer over patches.")
    n_encoder_layers: int = field(1, "Layers of the local encoder (l_E).")
    n_latent_layers: int = field(25, "Layers of the latent transformer (l_G).")
    n_decoder_layers: int = field(9, "Layers of the local decoder (l_D).")
    n_heads: int = field(16, "Attention heads of the local encoder and decoder (self- and cross-attention).")
    n_kv_heads: int | None = field(None, "Key/value heads of the local layers; None means n_heads.")
    latent_heads: int = field(16, "Attention heads of the latent transformer.")
    latent_kv_heads: int | None = field(None, "Key/value heads of the latent transformer; None means latent_heads.")
    encoder_ff: int | None = field(None, "SwiGLU hidden size of the encoder; None means int(8 * byte_dim / 3).")
    decoder_ff: int | None = field(None, "SwiGLU hidden size of the decoder; None means int(8 * byte_dim / 3).")
    latent_ff: int | None = field(None, "SwiGLU hidden size of the latent transformer; None: int(8 * latent_dim / 3).")
    local_window: int | None = field(512, "Sliding window of the byte-level self-attention; None attends all bytes.")
    cross_attn_k: int = field(2, "Patch slots per patch (k): each patch is k vectors of byte_dim in cross-attention.")
    encoder_cross_all_layers: bool = field(False, "Encoder cross-attention after every layer (else the last only).")
    decoder_cross_all_layers: bool = field(True, "Decoder cross-attention before every layer (else the first only).")
    hash_sizes: tuple[int, ...] = field((3, 4, 5, 6, 7, 8), "Byte n-gram sizes n of the hash embeddings (§3.2.1).")
    hash_functions: int = field(1, "Hash functions (primes) per n-gram size; each has its own table.")
    hash_vocab: int = field(500002, "Rows of each hash n-gram embedding table.")
    patching: Literal["entropy", "fixed"] = field(
        "entropy",
        "'entropy': a patch starts where the entropy model is unsure (§2.3); 'fixed': every patch_size bytes.",
    )
    patch_size: int = field(4, "Stride of fixed patching (after the one-byte first patch).")
    entropy_rule: Literal["global", "monotonic"] = field(
        "global", "'global': start where H(x_t) > threshold; 'monotonic': where H(x_t) - H(x_t-1) > threshold (§2.3)."
    )
    entropy_threshold: float = field(1.335442066192627, "Entropy threshold (nats): θ_g or θ_r of §2.3.")
    max_patch_length: int | None = field(None, "Split patches longer than this into pieces of at most this many bytes.")
    entropy_dim: int = field(768, "Width of the built-in entropy model (a small decoder_only byte LM).")
    entropy_layers: int = field(14, "Layers of the built-in entropy model.")
    entropy_heads: int = field(12, "Attention heads of the built-in entropy model.")
    entropy_ff: int | None = field(2048, "SwiGLU hidden size of the entropy model; None: int(8 * entropy_dim / 3).")
    entropy_window: int | None = field(512, "Sliding window of the entropy model's attention; None attends all.")
    entropy_rope_base: float = field(10000.0, "RoPE base of the entropy model.")
    rope_base: float = field(500000.0, "RoPE base of the encoder, decoder and latent transformer.")
    norm_eps: float = field(1e-5, "Epsilon of every RMSNorm.")
    dropout: float = field(0.0, "Dropout on embeddings and attention probabilities.")

    aliases: ClassVar[Mapping[str, str]] = {
        "num_encoder_layers": "n_encoder_layers",
        "num_latent_layers": "n_latent_layers",
        "num_decoder_layers": "n_decoder_layers",
        "num_heads": "n_heads",
        "num_kv_heads": "n_kv_heads",
        "patching_threshold": "entropy_threshold",
    }

    def validate(self) -> None:
        """Sizes positive, heads divide widths, hash sizes >= 1, dropout in [0, 1)."""
        super().validate()
        self.check_positive(
            "vocab_size", "byte_dim", "latent_dim", "n_encoder_layers", "n_latent_layers", "n_decoder_layers",
            "n_heads", "n_kv_heads", "latent_heads", "latent_kv_heads", "encoder_ff", "decoder_ff", "latent_ff",
            "local_window", "cross_attn_k", "hash_functions", "hash_vocab", "patch_size", "max_patch_length",
            "entropy_dim", "entropy_layers", "entropy_heads", "entropy_ff", "entropy_window",
        )  # fmt: skip
        self.check_choice("patching", ("entropy", "fixed"))
        self.check_choice("entropy_rule", ("global", "monotonic"))
        self.check_divides("n_heads", "byte_dim")
        self.check_divides("latent_heads", "latent_dim")
        self.check_divides("entropy_heads", "entropy_dim")
        self.check_divides("n_kv_heads", "n_heads")
        self.check_divides("latent_kv_heads", "latent_heads")
        for name, dim, heads in (
            ("n_heads", self.byte_dim, self.n_heads),
            ("latent_heads", self.latent_dim, self.latent_heads),
            ("entropy_heads", self.entropy_dim, self.entropy_heads),
        ):
            if (dim // heads) % 2:
                self.fail(name, f"must leave an even head size (RoPE rotates pairs), got {dim} // {heads}")
        if not self.hash_sizes or any(n < 1 for n in self.hash_sizes):
            self.fail("hash_sizes", "must list n-gram sizes >= 1 (the paper uses 3..8)")
        self.check_range("dropout", 0.0, 1.0)
        if self.dropout == 1.0:
            self.fail("dropout", "must be < 1")

    def ff(self, dim: int, size: int | None) -> int:
        """The SwiGLU hidden size: ``size``, or transformers' BLT default ``int(8 * dim / 3)``."""
        return size if size is not None else int(8 * dim / 3)

    @property
    def n_hash_tables(self) -> int:
        """Number of hash embedding tables: one per (hash function, n-gram size)."""
        return self.hash_functions * len(self.hash_sizes)


SPECS = (
    ArchSpec(
        name="byte_latent_transformer",
        family="transformer",
        distribution="edifice-attention",
        summary="Byte Latent Transformer: hash n-gram byte encoder, entropy patching, latent transformer over patches.",
        paper=PAGNONI,
        config="edifice_attention.configs.byte_latent_transformer:ByteLatentTransformerConfig",
        model="edifice_attention.byte_latent_transformer:ByteLatentTransformer",
        tiny={
            "byte_dim": 16,
            "latent_dim": 32,
            "n_encoder_layers": 1,
            "n_latent_layers": 1,
            "n_decoder_layers": 2,
            "n_heads": 2,
            "latent_heads": 4,
            "latent_kv_heads": 2,
            "encoder_ff": 32,
            "decoder_ff": 32,
            "latent_ff": 64,
            "local_window": 8,
            "hash_sizes": (3, 4, 5),
            "hash_vocab": 32,
            "entropy_dim": 16,
            "entropy_layers": 1,
            "entropy_heads": 2,
            "entropy_ff": 32,
            "entropy_window": 8,
            # Above ln(260) ~ 5.561, the most an untrained byte LM's entropy can be: the tiny model's patches come
            # from the forced starts and the 6-byte splits only, so no boundary hangs on an entropy's last digits
            # (which differ between devices, dtypes and compiled code). The signature test exercises the threshold.
            "entropy_threshold": 6.0,
            "max_patch_length": 6,
        },
        inputs={
            "input_ids": TensorSpec(
                ("B", "T"), dtype="int64", domain="int[0, vocab_size)", doc="Byte ids (byte value + 4; 0-3 special)."
            ),
        },
        outputs={
            "logits": TensorSpec(("B", "T", "vocab_size"), doc="Next-byte logits."),
            "patch_ids": TensorSpec(
                ("B", "T"), dtype="int64", domain="int[0, T)", doc="Index of the patch each byte belongs to."
            ),
        },
        causal=True,
        stateful=True,
        verification="parity:transformers.BltForCausalLM",
        grad_exempt={
            "entropy_model.*": "the entropy model only chooses patch boundaries, a discrete decision (§2.3); it is "
            "trained on its own as a byte LM",
        },
        interop=("transformers.BltForCausalLM",),
    ),
)

CONVERTERS = (
    Converter(
        "transformers.BltForCausalLM",
        "byte_latent_transformer",
        "edifice_attention.byte_latent_transformer:from_transformers",
        "transformers BLT checkpoints (BltForCausalLM, patcher included): byte ids -> next-byte logits.",
    ),
)
