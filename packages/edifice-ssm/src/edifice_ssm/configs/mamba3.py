"""Config and spec of ``mamba3``: Mamba-3, the exponential-trapezoidal, complex-valued, MIMO selective SSM.

Torch-free; the model is :mod:`edifice_ssm.mamba3` and the equations are in ``docs/design/mamba3.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "Mamba3Config"]

LAHOTI_ET_AL = Paper(
    "Mamba-3: Improved Sequence Modeling using State Space Principles",
    "Lahoti, Li, Chen, Wang, Bick, Kolter, Dao & Gu",
    2026,
    "2603.15569",
)

_ROPE_FRACTIONS = (0.5, 1.0)


@dataclasses.dataclass(kw_only=True)
class Mamba3Config(SequenceConfig):
    """Mamba-3: pre-norm residual Mamba-3 mixers (trapezoidal rule, rotary complex state, MIMO), optional MLPs."""

    arch: str = field("mamba3", "Registry name of the architecture this config builds.")
    d_state: int = field(128, "SSM state size N per head (B and C have this many features per group and rank).")
    expand: int = field(2, "Inner width d_inner = expand * d_model (the x and z streams).")
    head_dim: int = field(64, "Head size P; the number of heads is d_inner / head_dim, each with its own decay.")
    n_groups: int = field(1, "Groups of B/C shared by consecutive heads (must divide the number of heads).")
    mimo_rank: int = field(1, "MIMO rank r: inputs, keys and queries per head and step (1 = SISO).")
    complex_state: bool = field(True, "Complex-valued state, computed as data-dependent rotations of B and C.")
    rope_fraction: float = field(0.5, "Fraction of the state dimensions that rotate: 0.5 or 1.0.")
    trapezoidal: bool = field(True, "Exponential-trapezoidal rule; False gives exponential-Euler (Mamba-2's rule).")
    chunk_size: int = field(64, "Positions per chunk of the chunked scan; the result does not depend on it.")
    d_ff: int = field(0, "Hidden size of a SwiGLU MLP after each mixer; 0 gives mixer-only blocks.")
    bias: bool = field(False, "Biases on in_proj and out_proj.")
    norm_eps: float = field(1e-5, "Epsilon of the block RMSNorms, the B/C norms and the final norm.")
    dt_min: float = field(0.001, "Smallest initial step size (log-uniform in [dt_min, dt_max]).")
    dt_max: float = field(0.1, "Largest initial step size.")
    dt_init_floor: float = field(1e-4, "Initial step sizes are clamped to at least this.")
    a_floor: float = field(1e-4, "The data-dependent decay rate A_t = -softplus(.) is capped at -a_floor.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of the token embedding.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "state_size": "d_state",
        "expand_factor": "expand",
        "headdim": "head_dim",
        "ngroups": "n_groups",
        "rank": "mimo_rank",
        "complex": "complex_state",
    }

    def validate(self) -> None:
        """Check sizes are positive, heads tile d_inner, groups divide heads, the rotation has pairs to rotate."""
        super().validate()
        self.check_positive("d_state", "expand", "head_dim", "n_groups", "mimo_rank", "chunk_size", "norm_eps")
        self.check_positive("dt_min", "dt_max", "dt_init_floor", "a_floor", "init_std")
        self.check_positive("d_ff", allow_zero=True)
        self.check_choice("rope_fraction", _ROPE_FRACTIONS)
        if self.d_inner % self.head_dim:
            self.fail("head_dim", f"must divide d_inner = expand * d_model = {self.d_inner}")
        if self.n_heads % self.n_groups:
            heads = f"the number of heads d_inner / head_dim = {self.n_heads} (d_model={self.d_model})"
            self.fail("n_groups", f"must divide {heads}")
        if self.complex_state and self.n_angles < 1:
            self.fail("d_state", f"is too small to rotate any pair with rope_fraction={self.rope_fraction}")
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")

    @property
    def d_inner(self) -> int:
        """Width of the x and z streams, ``expand * d_model``."""
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        """Number of SSM heads, ``d_inner / head_dim``."""
        return self.d_inner // self.head_dim

    @property
    def n_angles(self) -> int:
        """Rotated pairs of state dimensions (0 without a complex state)."""
        if not self.complex_state:
            return 0
        return int(self.d_state * self.rope_fraction) // 2


SPECS = (
    ArchSpec(
        name="mamba3",
        family="ssm",
        distribution="edifice-ssm",
        summary="Mamba-3: exponential-trapezoidal SSM with a rotary (complex) state and MIMO updates; no convolution.",
        paper=LAHOTI_ET_AL,
        config="edifice_ssm.configs.mamba3:Mamba3Config",
        model="edifice_ssm.mamba3:Mamba3",
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
            "mimo_rank": 2,
            "chunk_size": 4,
        },
        verification="oracle:docs/design/mamba3.md (complex-valued exponential-trapezoidal MIMO recurrence, fp64)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
