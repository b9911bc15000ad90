"""Config and spec of ``ttt_e2e``: a sliding-window Transformer that keeps training its MLPs at test time (torch-free).

The model is :mod:`edifice_recurrent.ttt_e2e`; its equations are in ``docs/design/ttt_e2e.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "TTTE2EConfig"]


@dataclasses.dataclass(kw_only=True)
class TTTE2EConfig(SequenceConfig):
    """TTT-E2E (Tandon et al. 2025): sliding-window attention; the last blocks' extra MLPs learn at test time."""

    arch: str = field("ttt_e2e", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Attention heads.")
    head_dim: int | None = field(None, "Features per head; None means d_model // n_heads.")
    mlp_ratio: float = field(4.0, "Hidden units of every MLP are mlp_ratio * d_model.")
    mutable_fraction: float = field(0.25, "Fraction of blocks (the last ones, rounded up) with a test-time MLP.")
    window_size: int = field(64, "Sliding-window attention: each token attends its last window_size tokens.")
    mini_batch_size: int = field(16, "Tokens per inner mini-batch b (one gradient step each); needs <= window_size.")
    inner_lr: float = field(0.1, "Learning rate η of the test-time gradient step on the mutable MLPs.")
    rope_theta: float = field(10000.0, "RoPE base.")
    norm_eps: float = field(1e-6, "Epsilon of the RMSNorms.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of every weight and of W_0.")

    aliases: ClassVar[Mapping[str, str]] = {**SequenceConfig.aliases, "chunk_size": "mini_batch_size"}

    def validate(self) -> None:
        """Check sizes are positive, the window covers a mini-batch and the fraction lies in (0, 1]."""
        super().validate()
        self.check_positive("n_heads", "head_dim", "mlp_ratio", "window_size", "mini_batch_size", "inner_lr")
        self.check_positive("rope_theta", "norm_eps", "init_std")
        if not 0.0 < self.mutable_fraction <= 1.0:
            self.fail("mutable_fraction", "must lie in (0, 1] (at least the last block learns at test time)")
        if self.window_size < self.mini_batch_size:
            self.fail("window_size", f"must be >= mini_batch_size={self.mini_batch_size} (attention covers a batch)")
        if self.head_dim is None and self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")
        if self.head_size % 2:
            self.fail("head_dim", f"gives {self.head_size} (of d_model={self.d_model}); it must be even (RoPE pairs)")
        if self.mlp_hidden < 1:
            self.fail("mlp_ratio", f"gives {self.mlp_hidden} hidden units; needs at least 1")
        if not self.rope_theta > 1:
            self.fail("rope_theta", "must be > 1")

    @property
    def head_size(self) -> int:
        """The resolved features per head."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        """Hidden units of each MLP, ``round(mlp_ratio * d_model)``."""
        return round(self.mlp_ratio * self.d_model)

    @property
    def n_mutable(self) -> int:
        """Blocks (the last ones) with a test-time MLP: ``ceil(mutable_fraction * n_layers)``."""
        return max(1, math.ceil(self.mutable_fraction * self.n_layers - 1e-9))


TANDON = Paper("End-to-End Test-Time Training for Long Context", "Tandon, Dalal, Li et al.", 2025, "2512.23675")

SPECS = (
    ArchSpec(
        name="ttt_e2e",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="TTT-E2E: a sliding-window Transformer that keeps learning at test time by next-token prediction, "
        "one gradient step per mini-batch on its last blocks' MLPs; meta-learned through the inner loop.",
        paper=TANDON,
        config="edifice_recurrent.configs.ttt_e2e:TTTE2EConfig",
        model="edifice_recurrent.ttt_e2e:TTTE2E",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "n_heads": 2,
            "mlp_ratio": 2.0,
            "window_size": 6,
            "mini_batch_size": 4,
            "vocab_size": 32,
        },
        verification="oracle:docs/design/ttt_e2e.md -- token-by-token model with each mini-batch's inner "
        "gradient step recomputed by autograd on its next-token loss, fp64",
        causal=True,
        stateful=True,
        variable_length=True,
        compile_fullgraph=False,
        reasons={
            "no_compile_fullgraph": "the inner loop calls torch.autograd.grad inside forward (one gradient step of "
            "the mutable MLPs per mini-batch), which torch.compile(fullgraph=True) cannot trace"
        },
    ),
)
