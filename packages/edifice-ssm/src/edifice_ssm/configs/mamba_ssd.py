"""Config of ``mamba_ssd``: Mamba-2, a stack of SSD mixers (torch-free); the model is :mod:`edifice_ssm.mamba_ssd`.

Also declares the ``mamba2`` block (the mixer alone, for hybrids such as ``nemotron_h``) and the converters from
transformers' ``Mamba2ForCausalLM`` / ``Mamba2Model``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, BlockSpec, Converter, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["BLOCKS", "CONVERTERS", "SPECS", "MambaSSDConfig"]

DAO_GU = Paper(
    "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space Duality",
    "Dao & Gu",
    2024,
    "2405.21060",
)


@dataclasses.dataclass(kw_only=True)
class MambaSSDConfig(SequenceConfig):
    """Mamba-2 (Dao & Gu 2024): in_proj -> conv1d(x, B, C) -> SSD -> gated RMSNorm -> out_proj, pre-norm residual."""

    arch: str = field("mamba_ssd", "Registry name of the architecture this config builds.")
    d_state: int = field(128, "SSM state size N per head (B and C have this many features per group).")
    d_conv: int = field(4, "Kernel size of the causal depthwise convolution over x, B and C.")
    expand: int = field(2, "Inner width d_inner = expand * d_model (the x and z streams).")
    head_dim: int = field(64, "Head size P; the number of heads is d_inner / head_dim, each with a scalar decay.")
    n_groups: int = field(1, "Groups of B/C shared by d_inner / head_dim / n_groups consecutive heads (divides heads).")
    chunk_size: int = field(256, "Positions per chunk of the SSD algorithm (§6); the result does not depend on it.")
    conv_bias: bool = field(True, "Bias in the causal convolution.")
    bias: bool = field(False, "Biases on in_proj and out_proj.")
    norm_eps: float = field(1e-5, "Epsilon of the block RMSNorms, the gated RMSNorm and the final norm.")
    dt_min: float = field(0.001, "Smallest initial step size dt (log-uniform in [dt_min, dt_max]).")
    dt_max: float = field(0.1, "Largest initial step size dt.")
    dt_init_floor: float = field(1e-4, "Initial step sizes are clamped to at least this.")
    a_init_min: float = field(1.0, "Initial -A per head is uniform in [a_init_min, a_init_max] (stored as A_log).")
    a_init_max: float = field(16.0, "Upper end of the initial -A range.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of the token embedding.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "state_size": "d_state",
        "expand_factor": "expand",
        "conv_size": "d_conv",
        "conv_kernel": "d_conv",
        "headdim": "head_dim",
        "ngroups": "n_groups",
    }

    def validate(self) -> None:
        """Check sizes are positive, heads tile d_inner and groups divide heads, and the init ranges are ordered."""
        super().validate()
        self.check_positive("d_state", "d_conv", "expand", "head_dim", "n_groups", "chunk_size", "norm_eps")
        self.check_positive("dt_min", "dt_max", "dt_init_floor", "a_init_min", "a_init_max", "init_std")
        if self.d_inner % self.head_dim:
            self.fail("head_dim", f"must divide d_inner = expand * d_model = {self.d_inner}")
        elif self.n_heads % self.n_groups:
            heads = f"the number of heads d_inner / head_dim = {self.n_heads} (d_model={self.d_model})"
            self.fail("n_groups", f"must divide {heads}")
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")
        if self.a_init_min > self.a_init_max:
            self.fail("a_init_min", f"must be <= a_init_max={self.a_init_max}")

    @property
    def d_inner(self) -> int:
        """Width of the x and z streams, ``expand * d_model``."""
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        """Number of SSD heads, ``d_inner / head_dim``."""
        return self.d_inner // self.head_dim


SPECS = (
    ArchSpec(
        name="mamba_ssd",
        family="ssm",
        distribution="edifice-ssm",
        summary="Mamba-2: selective SSM with scalar decay per head, computed by the chunked state space dual (SSD).",
        paper=DAO_GU,
        config="edifice_ssm.configs.mamba_ssd:MambaSSDConfig",
        model="edifice_ssm.mamba_ssd:MambaSSD",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        # One layer keeps the torch.compile check well inside its 2 s time budget; the tests stack two.
        tiny={
            "d_model": 16,
            "n_layers": 1,
            "d_in": 12,
            "d_state": 8,
            "head_dim": 8,
            "n_groups": 2,
            "chunk_size": 4,
        },
        verification="parity:transformers.Mamba2Model",
        causal=True,
        stateful=True,
        variable_length=True,
        interop=("transformers.Mamba2ForCausalLM", "transformers.Mamba2Model"),
    ),
)

BLOCKS = (
    BlockSpec(
        "mamba2",
        "edifice_ssm.mamba_ssd:Mamba2Mixer",
        "Mamba-2 token mixer: in_proj, causal conv on x/B/C, chunked SSD, gated RMSNorm, out_proj.",
    ),
)

_CONVERT = "edifice_ssm.convert_mamba2"

CONVERTERS = (
    Converter(
        "transformers.Mamba2ForCausalLM", "mamba_ssd", f"{_CONVERT}:from_mamba2", "Mamba-2 language models (logits)."
    ),
    Converter(
        "transformers.Mamba2Model",
        "mamba_ssd",
        f"{_CONVERT}:from_mamba2",
        "Mamba-2 backbones; the LM head is tied to the token embedding.",
    ),
)
