"""Configs and specs of ``xlstm``, ``mlstm`` and ``slstm``: Beck et al.'s xLSTM stacks (torch-free).

One config describes the three entries: a stack of residual blocks, each either an mLSTM block (matrix memory,
chunkwise-parallel) or an sLSTM block (scalar memory with recurrent connections). ``slstm_at`` says which blocks are
sLSTM blocks, as the paper's ``xLSTM[a:b]`` ratios do; ``mlstm`` fixes it to none, ``slstm`` to all.
See :mod:`edifice_recurrent.xlstm` for the equations and the deviations from the paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Converter, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["CONVERTERS", "SPECS", "MLSTMConfig", "SLSTMConfig", "XLSTMConfig"]

BECK = Paper("xLSTM: Extended Long Short-Term Memory", "Beck et al.", 2024, "2405.04517")


def _round_up(value: float, multiple: int) -> int:
    """``value`` rounded to a multiple of ``multiple`` exactly as the authors' xlstm package and transformers do.

    Their ``int((x + m - 1) // m * m)`` rounds an integer up, but a fractional ``x`` only up to the next multiple when
    its excess exceeds 1: ``768 * 2.667 = 2048.26 -> 2048`` (``ceil`` would give 2112 and refuse their checkpoints).
    """
    return int((value + multiple - 1) // multiple * multiple)


@dataclasses.dataclass(kw_only=True)
class XLSTMConfig(SequenceConfig):
    """An xLSTM stack: mLSTM blocks, with sLSTM blocks at the indices ``slstm_at`` (paper §2.4, Fig. 1)."""

    arch: str = field("xlstm", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Heads of the mLSTM and sLSTM cells (each cell's memory is block-diagonal over heads).")
    slstm_at: tuple[int, ...] | None = field(
        (1,), "0-based indices of the sLSTM blocks (the others are mLSTM blocks); None means every block."
    )
    qk_dim_factor: float = field(0.5, "mLSTM query/key width as a fraction of d_model (split over the heads).")
    v_dim_factor: float = field(1.0, "mLSTM value width as a fraction of d_model (split over the heads).")
    ffn_factor: float = field(2.667, "Hidden size of the mLSTM blocks' SwiGLU feed-forward, as a multiple of d_model.")
    slstm_ffn_factor: float = field(4 / 3, "Hidden size of the sLSTM blocks' GeLU-gated feed-forward (paper: 4/3).")
    ffn_multiple_of: int = field(64, "Feed-forward hidden sizes are rounded to a multiple of this (as transformers).")
    gate_soft_cap: float | None = field(15.0, "Soft-cap the mLSTM gate pre-activations to cap*tanh(x/cap); None: off.")
    chunk_size: int = field(64, "Chunk length of the chunkwise-parallel mLSTM.")
    norm_eps: float = field(1e-6, "Epsilon of the RMSNorms and the per-head norms.")
    eps: float = field(1e-6, "Epsilon added to the mLSTM normaliser max(|q·n|, exp(-m)).")
    bias: bool = field(False, "Biases on the projections (the gate pre-activations always have one).")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "num_blocks": "n_layers",
        "expand_factor": "ffn_factor",
        "ffn_proj_factor": "ffn_factor",
        "use_bias": "bias",
    }

    def validate(self) -> None:
        """Check head sizes divide, ``slstm_at`` indexes existing blocks and the factors are positive."""
        super().validate()
        self.check_positive("n_heads", "qk_dim_factor", "v_dim_factor", "ffn_factor", "slstm_ffn_factor")
        self.check_positive("ffn_multiple_of", "gate_soft_cap", "chunk_size", "norm_eps")
        self.check_positive("eps", allow_zero=True)
        if self.slstm_at is not None:
            bad = [i for i in self.slstm_at if not 0 <= i < self.n_layers]
            if bad or len(set(self.slstm_at)) != len(self.slstm_at):
                self.fail("slstm_at", f"must be distinct block indices in [0, n_layers={self.n_layers}), got {bad}")
        for name, width in (("qk_dim_factor", self.qk_dim), ("v_dim_factor", self.v_dim)):
            if width % self.n_heads:
                self.fail(
                    name, f"gives width {width} (of d_model={self.d_model}), which n_heads={self.n_heads} must divide"
                )
        if self.slstm_blocks and self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model} (the sLSTM heads split the residual stream)")

    @property
    def qk_dim(self) -> int:
        """Total mLSTM query/key width."""
        return int(self.d_model * self.qk_dim_factor)

    @property
    def v_dim(self) -> int:
        """Total mLSTM value width."""
        return int(self.d_model * self.v_dim_factor)

    @property
    def slstm_blocks(self) -> frozenset[int]:
        """Indices of the sLSTM blocks."""
        return frozenset(range(self.n_layers) if self.slstm_at is None else self.slstm_at)

    @property
    def mlstm_ffn_dim(self) -> int:
        """Hidden size of the mLSTM blocks' feed-forward."""
        return _round_up(self.d_model * self.ffn_factor, self.ffn_multiple_of)

    @property
    def slstm_ffn_dim(self) -> int:
        """Hidden size of the sLSTM blocks' feed-forward."""
        return _round_up(self.d_model * self.slstm_ffn_factor, self.ffn_multiple_of)


@dataclasses.dataclass(kw_only=True)
class MLSTMConfig(XLSTMConfig):
    """An mLSTM-only xLSTM stack (``xLSTM[1:0]``; the layout of xLSTM 7B)."""

    arch: str = field("mlstm", "Registry name of the architecture this config builds.")
    slstm_at: tuple[int, ...] | None = field((), "No sLSTM blocks (fixed for this entry).")


@dataclasses.dataclass(kw_only=True)
class SLSTMConfig(XLSTMConfig):
    """An sLSTM-only xLSTM stack (``xLSTM[0:1]``)."""

    arch: str = field("slstm", "Registry name of the architecture this config builds.")
    slstm_at: tuple[int, ...] | None = field(None, "Every block is an sLSTM block (fixed for this entry).")


_MODEL = "edifice_recurrent.xlstm:XLSTM"
_TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "ffn_multiple_of": 8, "chunk_size": 8}
_COMMON = {
    "family": "recurrent",
    "distribution": "edifice-recurrent",
    "paper": BECK,
    "model": _MODEL,
    "inputs": sequence_inputs(),
    "outputs": sequence_outputs(),
    "causal": True,
    "stateful": True,
    "variable_length": True,
}

SPECS = (
    ArchSpec(
        name="xlstm",
        summary="xLSTM: residual stack of mLSTM (matrix memory, chunkwise) and sLSTM (scalar memory) blocks.",
        config="edifice_recurrent.configs.xlstm:XLSTMConfig",
        tiny={**_TINY, "slstm_at": (1,)},
        verification="oracle:xLSTM eqs. 8-27 (stabilised sLSTM/mLSTM step loops); parity:transformers.xLSTMModel",
        interop=("transformers.xLSTMModel",),
        **_COMMON,  # type: ignore[arg-type]
    ),
    ArchSpec(
        name="mlstm",
        summary="mLSTM stack: matrix memory with covariance update and exponential gating (xLSTM 7B layout).",
        config="edifice_recurrent.configs.xlstm:MLSTMConfig",
        tiny={**_TINY, "n_layers": 1},  # one block keeps every contract check well inside 2 s on 2 cores
        defaults={"slstm_at": ()},
        fixed=("slstm_at",),
        alias_of="xlstm",
        verification="parity:transformers.xLSTMModel",
        interop=("transformers.xLSTMModel",),
        **_COMMON,  # type: ignore[arg-type]
    ),
    ArchSpec(
        name="slstm",
        summary="sLSTM stack: scalar memory, head-wise recurrence, exponential gating, log-domain stabiliser.",
        config="edifice_recurrent.configs.xlstm:SLSTMConfig",
        tiny={**_TINY, "n_layers": 1},  # one block: the step loop over T unrolls under torch.compile
        defaults={"slstm_at": None},
        fixed=("slstm_at",),
        alias_of="xlstm",
        verification="oracle:xLSTM eqs. 8-17 (unstabilised sLSTM step loop in fp64)",
        **_COMMON,  # type: ignore[arg-type]
    ),
)

CONVERTERS = (
    Converter(
        "transformers.xLSTMModel",
        "mlstm",
        "edifice_recurrent.xlstm:from_transformers",
        "xLSTM 7B mLSTM stacks (weight_mode='single'): x = inputs_embeds -> last_hidden_state.",
    ),
)
