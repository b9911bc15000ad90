"""Config and spec of ``h3`` (Hungry Hungry Hippos): H3 layers, optionally a few attention layers (torch-free).

The model is :mod:`edifice_ssm.h3`: GPT-style pre-norm blocks whose mixer is the H3 layer,
``Q ⊙ SSM_diag(SSM_shift(K) ⊙ V)`` per head; ``attention_layers`` turns chosen layers into causal attention (the
paper's "Hybrid H3").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "H3Config"]


@dataclasses.dataclass(kw_only=True)
class H3Config(SequenceConfig):
    """H3: pre-norm residual blocks of an H3 layer (shift SSM, diagonal SSM, two gates) and an MLP."""

    arch: str = field("h3", "Registry name of the architecture this config builds.")
    d_state: int = field(64, "State size N of the diagonal SSM (even: N/2 conjugate pairs are stored).")
    d_shift: int | None = field(None, "State size of the shift SSM = its filter length; None means d_state.")
    head_dim: int = field(1, "Head size d_h: each head's diagonal SSM runs on the d_h x d_h outer products K V^T.")
    ssm_init: str = field("lin", "Initialisation of the diagonal SSM's A: 'lin' (S4D-Lin), 'inv' or 'legs'.")
    dt_min: float = field(0.001, "Smallest initial step size Δ of the diagonal SSM (log-uniform).")
    dt_max: float = field(0.1, "Largest initial step size Δ of the diagonal SSM.")
    attention_layers: tuple[int, ...] = field((), "Indices of layers that are causal attention (Hybrid H3).")
    n_heads: int = field(4, "Heads of the attention layers.")
    d_ff: int | None = field(None, "Hidden size of each block's MLP; None means 4 * d_model.")
    activation: str = field("gelu_tanh", "Activation of the MLP.")
    bias: bool = field(True, "Biases on the Q/K/V and output projections.")
    norm_eps: float = field(1e-5, "Epsilon of the LayerNorms.")
    init_std: float = field(0.02, "Std of the normal init of every Linear and embedding (GPT-2 scheme).")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "state_size": "d_state",
        "conv_size": "d_shift",
        "shift_size": "d_shift",
    }

    def validate(self) -> None:
        """Check sizes, the head layout, the initialisation and the attention layer indices."""
        super().validate()
        self.check_positive("d_state", "d_shift", "head_dim", "dt_min", "dt_max", "n_heads", "d_ff", "norm_eps")
        self.check_positive("init_std")
        if self.d_state % 2:
            self.fail("d_state", "must be even (the diagonal SSM stores conjugate pairs)")
        self.check_divides("head_dim", "d_model")
        self.check_choice("ssm_init", ("lin", "inv", "legs"))
        self.check_activation("activation")
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")
        for index in self.attention_layers:
            if not 0 <= index < self.n_layers:
                self.fail("attention_layers", f"indices must lie in [0, n_layers={self.n_layers})")
        if self.attention_layers:
            self.check_divides("n_heads", "d_model")

    @property
    def shift_size(self) -> int:
        """The resolved state size of the shift SSM (``d_shift`` or ``d_state``)."""
        return self.d_shift if self.d_shift is not None else self.d_state

    @property
    def ffn_size(self) -> int:
        """The resolved MLP hidden size (``d_ff`` or ``4 * d_model``)."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model


SPECS = (
    ArchSpec(
        name="h3",
        family="ssm",
        distribution="edifice-ssm",
        summary="H3: Q ⊙ SSM_diag(SSM_shift(K) ⊙ V) per head -- a shift SSM and an S4D SSM by FFT, recurrent decoding.",
        paper=Paper(
            title="Hungry Hungry Hippos: Towards Language Modeling with State Space Models",
            authors="Daniel Y. Fu, Tri Dao, Khaled K. Saab, Armin W. Thomas, Atri Rudra, Christopher Ré",
            year=2023,
            arxiv="2212.14052",
        ),
        config="edifice_ssm.configs.h3:H3Config",
        model="edifice_ssm.h3:H3",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "d_in": 6,
            "d_state": 4,
            "d_shift": 4,
            "head_dim": 2,
            "d_ff": 32,
            "attention_layers": (1,),
            "n_heads": 2,
        },
        verification="oracle:H3 §3.1 / Algorithm 1: shift-matrix SSM recurrence and S4D diagonal recurrence, fp64 "
        "(arXiv:2212.14052)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
