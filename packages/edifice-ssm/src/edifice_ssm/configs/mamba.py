"""Config and specs of ``mamba`` and its scan-algorithm variants ``mamba_cumsum`` and ``mamba_hillis_steele``.

The three entries are one model class (:class:`edifice_ssm.mamba.Mamba`); the registry name fixes ``scan``, the
algorithm of the selective scan, and nothing else: they compute the same function (torch-free).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, BlockSpec, Converter, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["BLOCKS", "CONVERTERS", "SPECS", "MambaConfig"]

_SCANS = ("chunked", "cumsum", "hillis_steele")


@dataclasses.dataclass(kw_only=True)
class MambaConfig(SequenceConfig):
    """Mamba (selective state spaces): a stack of pre-norm residual Mamba mixers, no attention and no MLP."""

    arch: str = field("mamba", "Registry name of the architecture this config builds.")
    d_state: int = field(16, "SSM state size N per channel.")
    expand: int = field(2, "Inner width d_inner = expand * d_model.")
    d_conv: int = field(4, "Kernel size of the causal depthwise convolution.")
    dt_rank: int | None = field(None, "Rank of the Δ projection; None means ceil(d_model / 16) (the paper's default).")
    dt_min: float = field(0.001, "Smallest initial Δ (Δ is drawn log-uniformly in [dt_min, dt_max]).")
    dt_max: float = field(0.1, "Largest initial Δ.")
    dt_init_floor: float = field(1e-4, "Initial Δ is clamped to at least this.")
    dt_scale: float = field(1.0, "Scale of the Δ projection's initial weights (std dt_rank**-0.5 * dt_scale).")
    dt_init: str = field("random", "Δ projection weight init: 'random' (uniform) or 'constant'.")
    conv_bias: bool = field(True, "Bias on the depthwise convolution.")
    bias: bool = field(False, "Biases on the input and output projections.")
    norm_eps: float = field(1e-5, "Epsilon of the RMSNorms.")
    scan: str = field("chunked", "Scan algorithm: 'chunked', 'cumsum' or 'hillis_steele' (same result).")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of linear and embedding weights.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "state_size": "d_state",
        "expand_factor": "expand",
        "conv_size": "d_conv",
        "conv_kernel": "d_conv",
        "time_step_rank": "dt_rank",
    }

    def validate(self) -> None:
        """Check sizes are positive, Δ's initial range is ordered and the choices are known."""
        super().validate()
        self.check_positive("d_state", "expand", "d_conv", "dt_rank", "dt_min", "dt_max", "dt_scale", "norm_eps")
        self.check_positive("dt_init_floor", "init_std")
        self.check_choice("scan", _SCANS)
        self.check_choice("dt_init", ("random", "constant"))
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")

    @property
    def d_inner(self) -> int:
        """Inner width of each mixer, ``expand * d_model``."""
        return self.expand * self.d_model

    @property
    def time_step_rank(self) -> int:
        """The resolved rank of the Δ projection (``dt_rank`` or ``ceil(d_model / 16)``)."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)


GU_DAO = Paper("Mamba: Linear-Time Sequence Modeling with Selective State Spaces", "Gu & Dao", 2023, "2312.00752")

_MODEL = "edifice_ssm.mamba:Mamba"
_CONFIG = "edifice_ssm.configs.mamba:MambaConfig"
_TINY = {"d_model": 16, "n_layers": 2, "d_state": 4, "d_conv": 3, "d_in": 6}
_COMMON = {
    "family": "ssm",
    "distribution": "edifice-ssm",
    "paper": GU_DAO,
    "config": _CONFIG,
    "model": _MODEL,
    "inputs": sequence_inputs(),
    "outputs": sequence_outputs(),
    "tiny": _TINY,
    "causal": True,
    "stateful": True,
    "variable_length": True,
}

SPECS = (
    ArchSpec(
        name="mamba",
        summary="Mamba: selective SSM mixers (input-dependent Δ, B, C), causal conv and SiLU gate; no attention.",
        defaults={"scan": "chunked"},
        fixed=("scan",),
        verification="parity:transformers.MambaModel",
        interop=("transformers.MambaModel", "transformers.MambaForCausalLM"),
        **_COMMON,  # type: ignore[arg-type]
    ),
    ArchSpec(
        name="mamba_cumsum",
        summary="Mamba with the selective scan computed from chunked cumulative sums of log decays (same outputs).",
        defaults={"scan": "cumsum"},
        fixed=("scan",),
        alias_of="mamba",
        verification="parity:transformers.MambaModel",
        **_COMMON,  # type: ignore[arg-type]
    ),
    ArchSpec(
        name="mamba_hillis_steele",
        summary="Mamba with the selective scan as one Hillis–Steele parallel prefix scan (same outputs).",
        defaults={"scan": "hillis_steele"},
        fixed=("scan",),
        alias_of="mamba",
        verification="parity:transformers.MambaModel",
        **_COMMON,  # type: ignore[arg-type]
    ),
)

BLOCKS = (
    BlockSpec("mamba", "edifice_ssm.mamba:MambaMixer", "Mamba-1 selective-SSM token mixer (sequence-mixer protocol)."),
)

CONVERTERS = (
    Converter(
        "transformers.MambaModel",
        "mamba",
        "edifice_ssm.convert_mamba:from_mamba",
        "transformers MambaModel / MambaForCausalLM weights onto mamba.",
    ),
    Converter(
        "transformers.MambaForCausalLM",
        "mamba",
        "edifice_ssm.convert_mamba:from_mamba",
        "transformers MambaForCausalLM (with its LM head) onto mamba.",
    ),
)
